"""Runs a study of the registry (mnistjax.studies): its variants as one sweep where they allow
it, else one after another, each into its own workdir."""

from __future__ import annotations

from typing import Any

from mnistjax import data, driver, studies
from mnistjax.errors import ConfigError
from mnistjax.files import make_folder, write_json


def run_study(name: str, overrides: dict[str, Any] | None = None, workdir: str | None = None,
              resume: bool = False, log=print, sweep: dict[str, tuple] | None = None,
              overwrite: bool = False) -> list[dict[str, Any]]:
  """Runs a study: as one sweep where its variants allow it, else variant after variant (each
  in workdir/<variant>/). `sweep` adds axes (e.g. seeds) to every run; resume and overwrite
  apply to each run's folder (see driver.train).

  Returns one row per member of every run: its name and final numbers.
  """
  study, overrides = studies.lookup(name), overrides or {}
  if resume and workdir is None:
    raise ConfigError("--resume needs the --workdir of the study to continue")
  axes = studies.as_sweep(name, overrides)
  if axes is not None:
    runs = [("sweep", study.config.replace(**overrides).validate())]
    axes = {**axes, **(sweep or {})}
  else:
    runs, axes = studies.expand(name, overrides), sweep or None
  log(f"study {name}: {study.description}; "
      + (f"one sweep over {', '.join(axes)}" if axes else f"{len(runs)} run(s)"))
  folder = make_folder(workdir) if workdir is not None else None  # before the data
  first = runs[0][1]
  dataset = data.load(first.dataset, first.data_dir, first.data_source, verify=first.verify_data)
  rows = []
  for variant, config in runs:
    log(f"--- {name} / {variant}")
    sub = None if workdir is None else (workdir if len(runs) == 1 else f"{workdir}/{variant}")
    result = driver.train(config, axes, sub, dataset, resume=resume, overwrite=overwrite, log=log)
    for member in result.summary["members"]:
      rows.append({"variant": ",".join(n for n in (variant if len(runs) > 1 else "",
                                                   member["member"]) if n) or variant,
                   "test_accuracy": member["final"]["test_accuracy"],
                   "test_loss": member["final"]["test_loss"],
                   "train_accuracy": member["final"].get("train_accuracy"),
                   "wall_seconds": result.summary["wall_seconds"],
                   "compile_seconds": result.summary["compile_seconds"], "run": variant})
  log(format_table(name, rows))
  outcome = target_outcome(study, rows) if study.target is not None else None
  if outcome:
    log(outcome["line"])
  if folder is not None:
    write_json(folder / "study.json",
               {"study": name, "description": study.description, "notebook": study.notebook,
                "runs": rows, "target": outcome})
  return rows


def target_outcome(study: studies.Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Whether the mean final test accuracy reached the study's target, and in what time (the
  runs' wall time, with and without compiling)."""
  accuracies = [r["test_accuracy"] for r in rows]
  mean = sum(accuracies) / len(accuracies)
  std = (sum((a - mean) ** 2 for a in accuracies) / max(len(accuracies) - 1, 1)) ** 0.5
  runs = {r["run"]: r for r in rows}.values()  # a sweep's members share one run
  wall = sum(r["wall_seconds"] for r in runs)
  compile_seconds = sum(r["compile_seconds"] for r in runs)
  reached = mean >= study.target
  line = (f"target {study.target:.2f}% mean test accuracy: {'reached' if reached else 'MISSED'}"
          f" ({mean:.2f} +- {std:.2f} over {len(rows)} runs) in {wall:.1f} s including "
          f"compile, {wall - compile_seconds:.1f} s without")
  return {"reached": reached, "mean": mean, "std": std, "wall_seconds": wall,
          "compile_seconds": compile_seconds, "line": line}


def format_table(name: str, rows: list[dict[str, Any]]) -> str:
  """The study's results beside what the notebook reported."""
  width = max(len(r["variant"]) for r in rows)
  lines = [f"{name}: {'variant':<{width}}  test acc  train acc  wall s"]
  for r in rows:
    train_acc = f"{r['train_accuracy']:9.2f}" if r["train_accuracy"] is not None else f"{'':>9}"
    lines.append(f"{'':>{len(name) + 2}}{r['variant']:<{width}}  {r['test_accuracy']:8.2f}"
                 f"  {train_acc}  {r['wall_seconds']:6.1f}")
  if studies.STUDIES[name].notebook:
    lines.append(f"notebook: {studies.STUDIES[name].notebook}")
  return "\n".join(lines)
