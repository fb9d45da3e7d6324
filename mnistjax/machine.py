"""What machine a figure was measured on: CPU model, its vector extensions, cores, accelerator.

Float32 rounding and the fastest kernels differ between CPU generations (AVX2 against
AVX-512, say), so every benchmark and report names the machine it ran on.
"""

from __future__ import annotations

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


def describe() -> dict[str, Any]:
  """The machine as JSON: CPU, vector extensions, cores, JAX's backend and devices."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {"cpu": cpu_model(), "vector_extensions": vector_extensions(), "cores": os.cpu_count(),
          "backend": jax.default_backend(),
          "devices": sorted({d.device_kind for d in devices}), "device_count": len(devices),
          "jax": jax.__version__}


def line(info: dict[str, Any] | None = None) -> str:
  """One line for a report's header: "Intel Xeon ... (avx2, avx512f), 2 cores, cpu backend"."""
  info = info or describe()
  text = f"{info['cpu']} ({', '.join(info['vector_extensions']) or 'no vector extensions seen'})"
  text += f", {info['cores']} cores, jax {info['jax']} on {info['backend']}"
  if info["backend"] != "cpu":
    text += f" ({info['device_count']} x {', '.join(info['devices'])})"
  return text
