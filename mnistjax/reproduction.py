"""Reproduces the notebooks' studies over seeds and compares them with what the notebooks
reported (each study's `numbers` in `mnistjax.studies`).

`reproduce()` runs each study's runs (`studies.runs`), every variant over the same seeds (the
seeds as one sweep axis), collects per seed the numbers the notebooks printed, and keeps them
in a report (reproduction.json) that `mnistjax.reproduction_report` turns into
REPRODUCTION.md and figures. Each run has its own folder under the workdir, so a rerun loads
what finished, resumes what was interrupted, and skips every study the report already holds.

The verdict: the notebook ran each variant once, so its number is one draw from the
distribution of seeds; the question is whether that distribution, estimated by ours, would
produce it. `interval` is the two-sided 95% prediction interval for one new draw,
mean +- t(n-1) * sd * sqrt(1 + 1/n), with sd our seeds' standard deviation, floored at the
test set's own sampling error (a few seeds can agree by chance; two equally good networks
still differ on 10,000 test images by about sqrt(p (1 - p) / 10000)), and widened by the
notebook number's own uncertainty where it has one (S2's losses are means of a few dozen
single-batch losses). A notebook number inside it is "reproduced", outside "differs", or
"differs as expected" where the notebook's protocol has a known bug we do not copy.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mnistjax import checkpoint, data, driver, machine, results, studies
from mnistjax.config import Config, settings_name
from mnistjax.errors import ConfigError, Interrupted, WorkdirError
from mnistjax.files import Lock, write_json
from mnistjax.workdir import CHECKPOINTS, RESULTS

# Every notebook study (those with the notebook's numbers; the speedrun is not a notebook's).
STUDIES = tuple(name for name, study in studies.STUDIES.items() if study.numbers is not None)
SEEDS = (1, 2, 3)
# --quick: the whole pipeline on small slices, a check that it runs, not of the numbers.
QUICK = {"train_limit": 640, "test_limit": 500, "epochs": 1}
NO_VERDICT = "pipeline check (--quick): no verdict"

# Two-sided 95% Student-t quantiles t(0.975, df), df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

# The numbers compared: name -> (what it is, in %?).
QUANTITIES = {
    "test_accuracy": ("final test accuracy %", True),
    "train_accuracy": ("final train accuracy %", True),
    "untrained_test_accuracy": ("test accuracy % before training", True),
    "train_loss_epoch1": ("training loss, end of epoch 1", False),
}

# A rough cost per training image in microseconds (2-core Xeon, batch 64) and per run (its
# compiling and set-up), for the time-left estimate before any study has finished; the
# estimate then scales by the measured pace.
_MICROSECONDS_PER_IMAGE = {"lenet": 400, "cnn": 150, "cnn2": 300, "cnn3": 8000,
                           "mlp_small": 6, "mlp_deep": 60}
_SECONDS_PER_RUN = 8.0
_PRIOR_SECONDS = 600.0


def t975(df: int) -> float:
  return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.5 / df


def interval(values: list[float], percent: bool, test_examples: int,
             notebook_sem: float = 0.0) -> tuple[float, float] | None:
  """The 95% prediction interval for one more seed's value (see the module's docstring);
  None with fewer than two seeds."""
  n = len(values)
  if n < 2:
    return None
  mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
  if percent:
    p = min(max(mean / 100, 0.0), 1.0)
    sd = max(sd, 100 * math.sqrt(max(p * (1 - p), 1e-4) / test_examples))
  half = t975(n - 1) * math.sqrt(sd ** 2 * (1 + 1 / n) + notebook_sem ** 2)
  return mean - half, mean + half


def verdict(study: str, variant: str, ours: list[float], notebook: float | None, percent: bool,
            test_examples: int, notebook_sem: float = 0.0) -> dict[str, Any]:
  """The comparison of one number: ours over seeds, the notebook's, and the verdict."""
  row: dict[str, Any] = {"notebook": notebook, "n": len(ours),
                         "mean": float(np.mean(ours)) if ours else None,
                         "std": float(np.std(ours, ddof=1)) if len(ours) > 1 else None}
  bounds = interval(ours, percent, test_examples, notebook_sem)
  row["interval"] = list(bounds) if bounds else None
  if notebook is None:
    row["verdict"] = "no notebook number"
  elif bounds is None:
    row["verdict"] = "one seed: no interval"
  elif bounds[0] <= notebook <= bounds[1]:
    row["verdict"] = "reproduced"
  elif variant in studies.lookup(study).expected:
    row["verdict"] = "differs as expected"
    row["reason"] = studies.lookup(study).expected[variant]
  else:
    row["verdict"] = "differs"
  return row


def curve_within(ours_by_epoch: list[list[float]], notebook: list[float],
                 test_examples: int) -> dict[str, Any]:
  """Per epoch, whether the notebook's value lies in our interval for that epoch."""
  inside = []
  for epoch, value in enumerate(notebook):
    values = [run[epoch] for run in ours_by_epoch if epoch < len(run)]
    bounds = interval(values, True, test_examples)
    inside.append(bool(bounds and bounds[0] <= value <= bounds[1]))
  return {"inside": inside, "epochs": len(notebook), "within": sum(inside)}


def compare(study: str, variants: dict[str, dict[str, Any]], test_examples: int
            ) -> dict[str, dict[str, Any]]:
  """Every comparison of a study's variants: per quantity a verdict, and the per-epoch
  test accuracy curve where the notebook printed one."""
  out = {}
  for variant, ours in variants.items():
    notebook = (studies.lookup(study).numbers or {}).get(variant, {})
    rows = {}
    for key, (_, percent) in QUANTITIES.items():
      if ours.get(key) is None or (key not in notebook and key != "test_accuracy"):
        continue
      rows[key] = verdict(study, variant, ours[key], notebook.get(key), percent, test_examples,
                          notebook.get(f"{key}_sem", 0.0))
    if "test_accuracy_by_epoch" in notebook and ours.get("test_accuracy_by_epoch"):
      rows["curve"] = curve_within(ours["test_accuracy_by_epoch"],
                                   notebook["test_accuracy_by_epoch"], test_examples)
    out[variant] = rows
  return out


def headline(rows: dict[str, Any]) -> str:
  """The quantity a variant is judged by: the first of QUANTITIES the notebook gave."""
  for key in QUANTITIES:
    if key in rows and rows[key]["notebook"] is not None:
      return key
  return "test_accuracy"


# ----------------------------------------------------------------------------- running


def study_runs(name: str, seeds: tuple[int, ...], quick: bool,
               changes: dict[str, Any] | None = None) -> list[studies.Run]:
  """A study's runs as the notebook ran them, every run over the seeds."""
  overrides = {**studies.lookup(name).notebook_ran, **(QUICK if quick else {}), **(changes or {})}
  return studies.runs(name, overrides, sweep={"seed": tuple(seeds)})


def _train_or_load(config: Config, axes: dict[str, tuple], folder: pathlib.Path,
                   dataset: data.Dataset, log) -> results.Result:
  """The run in folder: loaded if it finished, resumed if interrupted, else trained."""
  if (folder / "summary.json").exists():
    saved = json.loads((folder / "config.json").read_text())
    _, refused = config.resume_changes(saved["config"])
    if refused or saved.get("sweep") != {k: list(v) for k, v in axes.items()}:
      raise WorkdirError(f"{folder} holds a run with other settings "
                         f"({', '.join(sorted(refused)) or 'seeds'}); give another --workdir, "
                         "or move that folder aside")
    log(f"    finished earlier: loaded {folder}")
    return results.load(folder)
  resume = checkpoint.latest_epoch(folder / CHECKPOINTS) is not None
  overwrite = not resume and any((folder / n).exists() for n in RESULTS)
  return driver.train(config, axes, str(folder), dataset, resume=resume, overwrite=overwrite,
                      log=log)


def _numbers(result: results.Result) -> dict[str, dict[str, Any]]:
  """Per member: the numbers the notebooks printed, from a run's history and summary."""
  out = {}
  for k, member in enumerate(result.members):
    rows = sorted((r for r in result.history if r.get("member", "") == member.name),
                  key=lambda r: r["epoch"])
    trained = [r for r in rows if r["epoch"] >= 1]
    report = result.summary["members"][k]["classification_report"]
    epoch1 = [r for r in result.train_log if r.get("epoch") == 1]
    loss = None
    if epoch1:
      value = epoch1[-1]["loss"]
      loss = value[k] if isinstance(value, list) else value
    out[member.name] = {
        "settings": member.settings,
        "test_accuracy": trained[-1]["test_accuracy"],
        "test_loss": trained[-1]["test_loss"],
        "train_accuracy": trained[-1].get("train_accuracy"),
        "untrained_test_accuracy": rows[0]["test_accuracy"] if rows[0]["epoch"] == 0 else None,
        "test_accuracy_by_epoch": [r["test_accuracy"] for r in trained],
        "train_accuracy_by_epoch": [r["train_accuracy"] for r in trained
                                    if "train_accuracy" in r],
        "train_loss_epoch1": loss,
        "f1_by_class": [c["f1"] for c in report["classes"].values()],
        "diverged": result.summary["members"][k]["diverged"],
    }
  return out


def measure(name: str, seeds: tuple[int, ...], workdir: pathlib.Path, datasets: dict,
            quick: bool = False, changes: dict[str, Any] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs (or loads) every run of a study over the seeds; returns its report entry: per
  variant, per quantity, one value per seed."""
  t0 = time.perf_counter()
  variants: dict[str, dict[str, list]] = {}
  wall = compile_seconds = 0.0
  test_examples = 0
  for run in study_runs(name, seeds, quick, changes):
    config = run.config
    key = (config.dataset, config.data_dir, config.verify_data)
    if key not in datasets:
      datasets[key] = data.load(config.dataset, config.data_dir, verify=config.verify_data)
    log(f"  {name} / {run.name}: {math.prod(len(v) for v in run.axes.values())} member(s) in "
        f"one program, in {workdir / run.name}")
    result = _train_or_load(config, run.axes, workdir / run.name, datasets[key], log)
    # What the run cost when it ran, whether that was now or in an earlier sitting.
    wall += result.summary["wall_seconds"]
    compile_seconds += result.summary["compile_seconds"]
    test_examples = len(result.predictions[0])
    for numbers in _numbers(result).values():
      variant = (studies.variant_name({k: v for k, v in numbers["settings"].items()
                                       if k != "seed"}) if run.name == "sweep" else run.name)
      entry = variants.setdefault(variant, {"seeds": []})
      entry["seeds"].append(numbers["settings"]["seed"])
      for field, value in numbers.items():
        if field != "settings":
          entry.setdefault(field, []).append(value)
  for entry in variants.values():  # a quantity no run measured is absent, not [None, ...]
    for field in [f for f, v in entry.items() if isinstance(v, list) and None in v]:
      del entry[field]
  return {"description": studies.lookup(name).description, "variants": variants,
          "test_examples": test_examples, "seconds": time.perf_counter() - t0,
          "runs_wall_seconds": wall, "compile_seconds": compile_seconds,
          "machine": machine.line(), "finished": datetime.datetime.now().isoformat("T", "seconds")}


def estimate_seconds(name: str, seeds: tuple[int, ...], quick: bool) -> float:
  """A rough a-priori cost of a study (training and evaluation), for the time-left line."""
  total = 0.0
  for run in study_runs(name, seeds, quick):
    config, members = run.config, math.prod(len(v) for v in run.axes.values())
    train = config.train_limit or 60000
    test = config.test_limit or 10000
    images = config.epochs * (train * (2 if config.eval_train else 1) + test)
    total += (_SECONDS_PER_RUN
              + members * images * _MICROSECONDS_PER_IMAGE[config.model] * 1e-6)
  return total


def check_body(body: Any, path: pathlib.Path) -> None:
  """Refuses (one line) a reproduction.json that is not a report: not an object, without its
  "studies", or naming a study that is not one of STUDIES (each name becomes a figure's file
  name: "../../x" would write outside the report's folder)."""
  if not isinstance(body, dict) or not isinstance(body.get("studies"), dict):
    raise WorkdirError(f"{path} is not a reproduction report (an object with \"studies\"); "
                       "move it aside")
  unknown = [name for name in body["studies"] if name not in STUDIES]
  if unknown:
    raise WorkdirError(f"{path} names studies that are not ours ({', '.join(map(repr, unknown))}"
                       f"; the studies: {', '.join(STUDIES)}); move it aside")


@dataclasses.dataclass
class Report:
  """reproduction.json: the settings of the reproduction and every finished study."""
  path: pathlib.Path
  body: dict[str, Any]

  @classmethod
  def open(cls, path: pathlib.Path, seeds: tuple[int, ...], quick: bool) -> Report:
    if path.exists():
      try:
        body = json.loads(path.read_text())
      except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} is not a reproduction report ({e}); move it aside") from None
      check_body(body, path)
      if tuple(body.get("seeds", ())) != tuple(seeds) or body.get("quick") != quick:
        raise ConfigError(f"{path} holds a reproduction over seeds {body.get('seeds')} "
                          f"(quick={body.get('quick')}); give --seeds="
                          f"{','.join(map(str, body.get('seeds', [])))} to continue it, or "
                          "another --out")
      return cls(path, body)
    return cls(path, {"seeds": list(seeds), "quick": quick, "studies": {}})

  def add(self, name: str | None = None, entry: dict[str, Any] | None = None) -> None:
    """Adds a finished study (or only this machine's description) and saves: the file is
    read again under a lock, so that processes adding studies to one report keep each
    other's."""
    with Lock(self.path.with_name(".reproduction.lock"), "reproduction"):
      if self.path.exists():
        self.body["studies"] = {**json.loads(self.path.read_text())["studies"],
                                **self.body["studies"]}
      if name is not None:
        self.body["studies"][name] = entry
      else:
        self.body["machine"] = machine.describe()
      write_json(self.path, self.body)


def reproduce(names: tuple[str, ...] = STUDIES, seeds: tuple[int, ...] = SEEDS,
              workdir: str = "runs/reproduce", out: str = ".", quick: bool = False,
              redo: bool = False, log: Callable[[str], None] = print) -> Report:
  """Runs the studies not yet in out/reproduction.json over the seeds and adds each to it as
  it finishes (`reproduction_report.write` then writes REPRODUCTION.md from it)."""
  unknown = [n for n in names if n not in STUDIES]
  if unknown:
    raise ConfigError(f"--studies: unknown {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ConfigError("--seeds: give distinct seeds, e.g. --seeds=1,2,3")
  out_path = pathlib.Path(out).expanduser().absolute()
  out_path.mkdir(parents=True, exist_ok=True)
  report = Report.open(out_path / "reproduction.json", seeds, quick)
  work = pathlib.Path(workdir).expanduser().absolute()
  todo = [n for n in names if redo or n not in report.body["studies"]]
  skipped = [n for n in names if n not in todo]
  if skipped:
    log(f"in {report.path} already: {', '.join(skipped)} (skipped)")
  datasets: dict = {}
  start, done_estimate, done_seconds = time.perf_counter(), 0.0, 0.0
  estimates = {n: estimate_seconds(n, seeds, quick) for n in todo}
  for i, name in enumerate(todo):
    # The measured pace against the estimate, drawn towards 1 while little is measured:
    # small studies are mostly compiling, which would mislead the estimate of large ones.
    pace = (done_seconds + _PRIOR_SECONDS) / (done_estimate + _PRIOR_SECONDS)
    left = pace * sum(estimates[n] for n in todo[i:])
    log(f"[{i + 1}/{len(todo)}] {name}: {studies.lookup(name).description}; "
        f"{duration(time.perf_counter() - start)} so far, about {duration(left)} left")
    try:
      entry = measure(name, seeds, work / name, datasets, quick, log=log)
    except Interrupted:
      raise Interrupted(f"interrupted in {name}; the finished studies are in {report.path}: "
                        "run the same command again to go on (an interrupted run resumes "
                        "from its last epoch)") from None
    entry["compared"] = compare(name, entry["variants"], entry["test_examples"])
    differing = [v for v, rows in entry["compared"].items()
                 if rows.get(headline(rows), {}).get("verdict") == "differs"]
    changes = studies.lookup(name).quirks
    if differing and changes:
      flags = settings_name({f"--{k}": v for k, v in changes.items()}, ", ")
      log(f"  {name}: running the notebook's own {flags}, as a full reproduction would, to "
          "check that step" if quick else
          f"  {name}: {', '.join(differing)} differs; running the notebook's own {flags} to "
          "see whether it explains that")
      quirk = measure(name, seeds, work / f"{name}-notebook-quirk", datasets, quick, changes,
                      log=log)
      quirk["changes"] = changes
      quirk["compared"] = compare(name, quirk["variants"], quirk["test_examples"])
      entry["quirk"] = quirk
    report.add(name, entry)
    done_estimate += estimates[name]
    done_seconds += entry["seconds"]
    log(f"  {name}: " + "; ".join(
        f"{v} {_short(rows, quick)}" for v, rows in entry["compared"].items()))
  report.add()
  log(f"{len(todo)} studies in {duration(time.perf_counter() - start)}"
      + (f"; {NO_VERDICT} ({QUICK['epochs']} epoch on {QUICK['train_limit']} training "
         "images: a reproduction runs without --quick)" if quick else ""))
  return report


def _short(rows: dict[str, Any], quick: bool = False) -> str:
  """A variant's headline number: ours, the notebook's and the verdict (none with --quick)."""
  row = rows[headline(rows)]
  text = f"{row['mean']:.4g}" + (f" +- {row['std']:.2g}" if row["std"] is not None else "")
  if row["notebook"] is None:
    return text
  return text + f" vs {row['notebook']:.4g}" + ("" if quick else f" ({row['verdict']})")


def duration(seconds: float) -> str:
  """A duration as "42s", "3m07s" or "2h05m"."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
