"""REPRODUCTION.md and its figures, written from a reproduction report (reproduction.json)."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import numpy as np

from mnistjax import reproduction, studies
from mnistjax.config import settings_name
from mnistjax.files import write_bytes, write_text

NOTEBOOKS = {
    "s0": "S0: LeNet on MNIST (PyTorch): activation, dropout, BatchNorm, initialisation",
    "s1": "S1: CNNs on Fashion-MNIST (PyTorch)",
    "s2": "S2: hand-written MLP and RMSprop on MNIST (PyTorch tensors)",
    "s4": "S4: hand-written deep MLP on MNIST (NumPy; PyTorch for Adam)",
}
FIGURES = "reproduction"  # folder of the figures, beside REPRODUCTION.md


def _number(value: float | None, percent: bool) -> str:
  if value is None:
    return "-"
  return f"{value:.2f}" if percent else f"{value:.3f}"


def _ours(row: dict[str, Any], percent: bool) -> str:
  text = _number(row["mean"], percent)
  if row["std"] is not None:
    text += f" ± {_number(row['std'], percent)}"
  return text + f" ({row['n']})"


def _range(row: dict[str, Any], percent: bool) -> str:
  if not row["interval"]:
    return "-"
  lo, hi = row["interval"]
  if percent:  # an accuracy can't leave [0, 100], whatever the normal approximation says
    lo, hi = max(lo, 0.0), min(hi, 100.0)
  return f"{_number(lo, percent)} – {_number(hi, percent)}"


def _table(name: str, entry: dict[str, Any], quick: bool = False) -> list[str]:
  lines = ["| variant | number | notebook | ours mean ± std (seeds) | 95% interval | verdict "
           "| per epoch |", "|---|---|---|---|---|---|---|"]
  for variant, rows in entry["compared"].items():
    if quick:
      rows = {k: ({**r, "verdict": reproduction.NO_VERDICT} if "verdict" in r else r)
              for k, r in rows.items()}
    diverged = sum(entry["variants"][variant].get("diverged", []))
    if diverged:  # frozen at their last finite step: what they reached before diverging
      seeds = len(entry["variants"][variant]["seeds"])
      rows = {k: ({**r, "verdict": f"{r['verdict']}; diverged in {diverged} of {seeds} seeds"}
                  if "verdict" in r else r) for k, r in rows.items()}
    first = True
    for key, (label, percent) in reproduction.QUANTITIES.items():
      if key not in rows:
        continue
      row = rows[key]
      curve = rows.get("curve") if key == "test_accuracy" and not quick else None
      per_epoch = f"{curve['within']}/{curve['epochs']} inside" if curve else ""
      lines.append(f"| {variant if first else ''} | {label} | "
                   f"{_number(row['notebook'], percent)} | {_ours(row, percent)} | "
                   f"{_range(row, percent)} | {row['verdict']} | {per_epoch} |")
      first = False
  return lines


def _diagnoses(name: str, entry: dict[str, Any], quick: bool = False) -> list[str]:
  """A sentence for every number that differs: what was measured about it (with --quick, the
  same sentences without a verdict: they check that the diagnosis runs)."""
  out = []
  notebook_all = studies.lookup(name).numbers or {}
  for variant, rows in entry["compared"].items():
    for key, (label, percent) in reproduction.QUANTITIES.items():
      row = rows.get(key)
      if not row or not row["verdict"].startswith("differs"):
        continue
      side = "higher" if row["mean"] > row["notebook"] else "lower"
      text = (f"- **{variant}, {label}**: ours is {side} "
              f"({_number(row['mean'], percent)} vs {_number(row['notebook'], percent)}).")
      if row.get("reason"):
        text += f" Expected: {row['reason']}."
      curve = rows.get("curve") if key == "test_accuracy" and not quick else None
      if curve:
        text += _curve_sentence(curve, "test accuracy")
        nb = notebook_all[variant]["test_accuracy_by_epoch"]
        ours_best = [max(run) for run in entry["variants"][variant]["test_accuracy_by_epoch"]]
        best = reproduction.interval(ours_best, True, entry["test_examples"])
        if best:
          inside = best[0] <= max(nb) <= best[1]
          text += (f" The notebook's best epoch ({max(nb):.2f}) is "
                   f"{'inside' if inside else 'outside'} our interval for the best epoch "
                   f"({best[0]:.2f} – {best[1]:.2f}).")
      if key == "train_accuracy":
        text += _train_fit(variant, entry, rows, notebook_all.get(variant, {}), quick)
      quirk = entry.get("quirk")
      if quirk and variant in quirk["compared"] and key in quirk["compared"][variant]:
        q = quirk["compared"][variant][key]
        changes = settings_name(quirk["changes"], ", ")
        text += f" Run again with the notebook's own {changes}: {_ours(q, percent)}" + (
            "." if quick else f", {q['verdict']}"
            + ("; so that quirk explains the difference." if q["verdict"] == "reproduced"
               else "; that quirk does not explain it."))
      out.append(text)
  return out


def _train_fit(variant: str, entry: dict[str, Any], rows: dict[str, Any],
               notebook: dict[str, Any], quick: bool = False) -> str:
  """Where the training accuracy differs: how much closer to the training set each side
  came (its train - test gap), and the notebook's training curve against ours per epoch."""
  text = ""
  test = rows.get("test_accuracy")
  if test and test.get("notebook") is not None:
    ours_gap = rows["train_accuracy"]["mean"] - test["mean"]
    nb_gap = rows["train_accuracy"]["notebook"] - test["notebook"]
    text += (f" Train minus test accuracy: ours {ours_gap:.2f}, the notebook's {nb_gap:.2f}"
             + ("." if quick else f" (test accuracy {test['verdict']})."))
  ours_by_epoch = entry["variants"][variant].get("train_accuracy_by_epoch")
  if ours_by_epoch and "train_accuracy_by_epoch" in notebook and not quick:
    curve = reproduction.curve_within(ours_by_epoch, notebook["train_accuracy_by_epoch"],
                                      entry["test_examples"])
    text += _curve_sentence(curve, "train accuracy")
  return text


def _curve_sentence(curve: dict[str, Any], quantity: str) -> str:
  outside = [str(e + 1) for e, ok in enumerate(curve["inside"]) if not ok]
  return (f" Per epoch, the notebook's {quantity} lies inside our interval at "
          f"{curve['within']} of {curve['epochs']} epochs"
          + (f" (outside: epoch {', '.join(outside)})." if outside else "."))


def _figure(name: str, entry: dict[str, Any], path: pathlib.Path) -> None:
  """Ours (mean, std error bars, each seed) against the notebook's points; the per-epoch
  curves beside where the notebook printed them; s1_lr_wd as a heatmap."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if name == "s1_lr_wd":
    fig = _heatmap(entry)
  else:
    compared, variants = entry["compared"], entry["variants"]
    notebook = studies.lookup(name).numbers or {}
    curves = [v for v in variants if "test_accuracy_by_epoch" in notebook.get(v, {})
              and len(notebook[v]["test_accuracy_by_epoch"]) > 1]
    fig = Figure(figsize=(5 + 4 * bool(curves), 3.6))
    axes = fig.subplots(1, 1 + bool(curves), squeeze=False)[0]
    ax = axes[0]
    key = reproduction.headline(next(iter(compared.values())))
    label, _ = reproduction.QUANTITIES[key]
    for i, variant in enumerate(variants):
      values = variants[variant].get(key, [])
      ax.scatter([i] * len(values), values, s=10, color="tab:blue", alpha=0.4)
      row = compared[variant].get(key)
      if row and row["mean"] is not None:
        ax.errorbar([i], [row["mean"]], yerr=[row["std"] or 0], fmt="o", color="tab:blue",
                    capsize=4, label="ours (mean ± std)" if i == 0 else None)
      if row and row["notebook"] is not None:
        ax.scatter([i], [row["notebook"]], marker="x", s=60, color="tab:red",
                   label="notebook" if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(variants)), [v.replace(",", "\n") for v in variants], fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7)
    if curves:
      ax = axes[1]
      for j, variant in enumerate(curves):
        color = f"C{j}"
        runs = np.array(variants[variant]["test_accuracy_by_epoch"], float)
        epochs = np.arange(1, runs.shape[1] + 1)
        mean, std = runs.mean(0), runs.std(0, ddof=1) if len(runs) > 1 else 0 * runs[0]
        ax.plot(epochs, mean, color=color, label=f"{variant} (ours)")
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
        nb = notebook[variant]["test_accuracy_by_epoch"]
        ax.plot(range(1, len(nb) + 1), nb, "x--", color=color, label=f"{variant} (notebook)")
      ax.set_xlabel("epoch")
      ax.set_ylabel("test accuracy %")
      ax.legend(fontsize=6)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90)
  write_bytes(path, buffer.getvalue())


def _heatmap(entry: dict[str, Any]):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  settings = {v: entry["variants"][v] for v in entry["variants"]}
  grid = {tuple(float(kv.split("=")[1]) for kv in v.split(",")): e for v, e in settings.items()}
  lrs = sorted({k[0] for k in grid}, reverse=True)
  wds = sorted({k[1] for k in grid}, reverse=True)
  means = np.full((len(lrs), len(wds)), np.nan)
  cells = []
  fig = Figure(figsize=(5.5, 4))
  ax = fig.subplots()
  for (lr, wd), e in grid.items():
    i, j = lrs.index(lr), wds.index(wd)
    values = e["test_accuracy"]
    means[i, j] = np.mean(values)
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    cells.append((i, j, f"{means[i, j]:.1f}\n± {std:.1f}"))
  image = ax.imshow(means, cmap="viridis")
  middle = (np.nanmin(means) + np.nanmax(means)) / 2
  for i, j, text in cells:
    ax.text(j, i, text, ha="center", va="center", fontsize=8,
            color="black" if means[i, j] > middle else "white")
  fig.colorbar(image, ax=ax, label="test accuracy % (mean over seeds)")
  if (0.001, 0.04) in grid:  # the notebook's choice
    i, j = lrs.index(0.001), wds.index(0.04)
    ax.add_patch(_rectangle(j, i))
  ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
  ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
  ax.set_xlabel("weight decay")
  ax.set_ylabel("learning rate")
  ax.set_title("s1_lr_wd: CNN on Fashion-MNIST, 1 epoch (box: the notebook's choice)", fontsize=8)
  return fig


def _rectangle(x: int, y: int):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def markdown(body: dict[str, Any]) -> str:
  """REPRODUCTION.md: how it was made, the verdict rule, one table per notebook."""
  seeds = ", ".join(map(str, body["seeds"]))
  done = body["studies"]
  quick = bool(body.get("quick"))
  lines = [
      "# Reproduction of the four notebooks" + (": pipeline check (--quick)" if quick else ""),
      "",
      "Generated by `python experiments/reproduce.py"
      + (" --quick" if quick else "") + f"` from `reproduction.json`: every study "
      f"over seeds {seeds}, each beside what its notebook printed (docs/studies.md describes "
      "the studies). Do not edit: rerun the command.",
      "",
  ]
  if quick:
    q = reproduction.QUICK
    lines += [
        f"**A pipeline check, not a reproduction.** `--quick` trains every run for "
        f"{q['epochs']} epoch on the first {q['train_limit']} training images and evaluates "
        f"it on the first {q['test_limit']} test images, so its numbers say nothing about "
        "the notebooks': every verdict "
        f"reads *{reproduction.NO_VERDICT}*, and the diagnoses below only show that that "
        "step runs. The studies' notes, which describe the full protocol, are left out. "
        "`python experiments/reproduce.py` (no `--quick`) reproduces the studies.",
        "",
    ]
  else:
    lines += [
      "**Verdict.** A notebook ran each variant once, with one seed: its number is one draw "
      "from the spread that seeds give. We ask whether our runs would produce it: the 95% "
      "prediction interval for one more seed, mean ± t(n−1) · sd · √(1 + 1/n), with sd our "
      "seeds' standard deviation, at least the test set's sampling error √(p(1−p)/N) (a few "
      "seeds can agree by chance; two equally good networks still differ on N test images by "
      "that much), widened by the notebook number's own uncertainty where it has one (S2's "
      "losses are means of a few dozen single-batch losses). Inside: **reproduced**. Outside: "
      "**differs**, with a diagnosis below the table, or **differs as expected** where the "
      "notebook had a bug that we do not copy. With 3 seeds t(2) = 4.30, so the interval is "
      "wide: a verdict says whether our runs contradict the notebook, not that they match it "
      "to the last digit. *Per epoch*: at how many epochs the notebook's test accuracy lies "
      "inside our interval for that epoch.",
      "",
    ]
  machines = sorted({e["machine"] for e in done.values()})
  total = sum(_cost(e) for e in done.values())
  lines += [f"Ran on: {'; '.join(machines)}. The runs took {reproduction.duration(total)} "
            "in all (process wall time, diagnosis runs included).", ""]
  missing = [n for n in reproduction.STUDIES if n not in done]
  if missing:
    lines += [f"**Not yet run:** {', '.join(missing)} (`python experiments/reproduce.py` "
              "runs them and keeps the studies above).", ""]
  for prefix, title in NOTEBOOKS.items():
    names = [n for n in reproduction.STUDIES if n.startswith(prefix) and n in done]
    if not names:
      continue
    lines += [f"## {title}", ""]
    for name in names:
      entry = done[name]
      lines += [f"### {name}: {entry['description']}", ""]
      lines += _table(name, entry, quick) + [""]
      if studies.lookup(name).notes and not quick:
        lines += [studies.lookup(name).notes, ""]
      diagnoses = _diagnoses(name, entry, quick)
      if diagnoses:
        lines += ["Where ours differs" + (" (the diagnosis step, checked)" if quick else "")
                  + ":", ""] + diagnoses + [""]
      if name.startswith("s4") and name != "s4_adam":
        lines += _f1_table(name, entry) + [""]
      lines += [f"![{name}]({FIGURES}/{name}.png)", "",
                f"Runs: {reproduction.duration(_cost(entry))} (compiling "
                f"{reproduction.duration(_compile(entry))}) on {entry['machine']}; reported "
                f"{entry['finished']}.", ""]
  return "\n".join(lines)


def _cost(entry: dict[str, Any]) -> float:
  """The wall time of a study's runs, its diagnosis runs included."""
  quirk = entry.get("quirk") or {}
  return (entry.get("runs_wall_seconds", entry["seconds"])
          + quirk.get("runs_wall_seconds", quirk.get("seconds", 0.0)))


def _compile(entry: dict[str, Any]) -> float:
  return entry.get("compile_seconds", 0.0) + (entry.get("quirk") or {}).get("compile_seconds", 0.0)


def _f1_table(name: str, entry: dict[str, Any]) -> list[str]:
  """S4's per-class F1: the notebook's against our mean over seeds."""
  lines = ["Per-class F1 on the test set, notebook / ours (mean over seeds):", "",
           "| variant | " + " | ".join(str(c) for c in range(10)) + " |",
           "|---|" + "---|" * 10]
  for variant, ours in entry["variants"].items():
    nb = (studies.lookup(name).numbers or {}).get(variant, {}).get("f1_by_class")
    if not nb or "f1_by_class" not in ours:
      continue
    mean = np.mean(np.array(ours["f1_by_class"]), axis=0)
    lines.append(f"| {variant} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(nb, mean))
                 + " |")
  return lines


def write(body: dict[str, Any], out: pathlib.Path, log=print) -> None:
  """REPRODUCTION.md and out/reproduction/<study>.png for every study of the report."""
  reproduction.check_body(body, out / "reproduction.json")  # a name is a figure's file name
  (out / FIGURES).mkdir(parents=True, exist_ok=True)
  for name, entry in body["studies"].items():
    _figure(name, entry, out / FIGURES / f"{name}.png")
  write_text(out / "REPRODUCTION.md", markdown(body))
  log(f"wrote {out / 'REPRODUCTION.md'} and {len(body['studies'])} figures in {out / FIGURES}")
