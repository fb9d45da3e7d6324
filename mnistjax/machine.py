"""What machine a figure was measured on: CPU model, its vector extensions, cores, accelerator.

Float32 rounding and the fastest kernels differ between CPU generations (AVX2 against
AVX-512, say), so every benchmark and report names the machine it ran on.
"""

from __future__ import annotations

import functools
import os
import pathlib
import platform
from typing import Any

# The x86 / Arm vector extensions that decide which kernels XLA:CPU and oneDNN can use.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                     "amx_tile", "asimd", "sve")


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return {}
  fields: dict[str, str] = {}
  for line in text.split("\n\n")[0].splitlines():
    key, sep, value = line.partition(":")
    if sep:
      fields[key.strip()] = value.strip()
  return fields


def cpu_model() -> str:
  """The CPU's marketing name, as lscpu's "Model name"."""
  info = _cpuinfo()
  return (info.get("model name") or info.get("Model") or platform.processor()
          or platform.machine() or "unknown CPU")


def vector_extensions() -> list[str]:
  """Which of VECTOR_EXTENSIONS the CPU reports, in that order."""
  info = _cpuinfo()
  flags = set((info.get("flags") or info.get("Features") or "").split())
  return [ext for ext in VECTOR_EXTENSIONS if ext in flags]


# Where the machine does not say (no sysfs, no sysconf): a common desktop/server L3.
DEFAULT_CACHE_BYTES = 32 << 20


@functools.cache
def cache_sizes() -> dict[str, int]:
  """The CPU's data and unified caches by level ("L1d", "L2", "L3": bytes of one instance, as
  cpu0 sees it), from sysfs, else sysconf; {} where neither says."""
  sizes: dict[str, int] = {}
  for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
    try:
      level = (index / "level").read_text().strip()
      kind = (index / "type").read_text().strip()
      size = (index / "size").read_text().strip()
    except OSError:
      continue
    if kind == "Instruction" or not size:
      continue
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
    sizes[f"L{level}" + ("d" if kind == "Data" else "")] = int(size.rstrip("KMG")) * scale
  if not sizes:
    for name, key in (("L1d", "SC_LEVEL1_DCACHE_SIZE"), ("L2", "SC_LEVEL2_CACHE_SIZE"),
                      ("L3", "SC_LEVEL3_CACHE_SIZE")):
      try:
        value = os.sysconf(key)
      except (ValueError, OSError):
        continue
      if value > 0:
        sizes[name] = value
  return sizes


def last_level_cache_bytes() -> int:
  """The largest cache's size (L3 on most CPUs; DEFAULT_CACHE_BYTES where none is reported)."""
  return max(cache_sizes().values(), default=DEFAULT_CACHE_BYTES)


def describe() -> dict[str, Any]:
  """The machine as JSON: CPU, vector extensions, cores, JAX's backend and devices."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {"cpu": cpu_model(), "vector_extensions": vector_extensions(), "cores": os.cpu_count(),
          "backend": jax.default_backend(),
          "devices": sorted({d.device_kind for d in devices}), "device_count": len(devices),
          "caches": dict(cache_sizes()), "jax": jax.__version__}


def line(info: dict[str, Any] | None = None) -> str:
  """One line for a report's header: "Intel Xeon ... (avx2, avx512f), 2 cores, cpu backend"."""
  info = info or describe()
  text = f"{info['cpu']} ({', '.join(info['vector_extensions']) or 'no vector extensions seen'})"
  text += f", {info['cores']} cores, jax {info['jax']} on {info['backend']}"
  if info["backend"] != "cpu":
    text += f" ({info['device_count']} x {', '.join(info['devices'])})"
  return text
