"""notebooks/quickstart.ipynb runs in a real Jupyter kernel (nbclient), as a user's Jupyter or
Colab runs it, on a slice of real MNIST (MNISTJAX_QUICK=1): no cell fails, every plot shows
as an image, and the saved progress reads the finished epoch, so that the notebook cannot rot."""

from __future__ import annotations

import json
import pathlib
import sys
import types

import nbclient
import nbformat

from mnistjax import driver

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Appended to the notebook: what the run produced, as one JSON line for the asserts below.
CHECKS = """\
import json
print(json.dumps({
    "epochs": [r["epoch"] for r in result.history],
    "test_accuracy": result.history[-1]["test_accuracy"],
    "members": [r["member"] for r in swept.final],
    "predictions": list(result.predictions.shape),
    "train_log": len(result.train_log),
    "own": [(r["member"], r["epoch"]) for r in cnn.final],
    "own_accuracy": min(r["test_accuracy"] for r in cnn.final),
    "mnistjax": mnistjax.__file__,
}))"""


def _text(output) -> str:
  text = output.get("text", "")
  return "".join(text) if isinstance(text, list) else text


def test_the_quickstart_notebook_runs_in_a_jupyter_kernel(mnist, tmp_path, monkeypatch):
  notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
  # The install cell (%pip) is what this environment did already.
  notebook.cells = [cell for cell in notebook.cells if "pip install" not in cell.source]
  notebook.cells.append(nbformat.v4.new_code_cell(CHECKS))
  monkeypatch.setenv("MNISTJAX_QUICK", "1")  # the kernel inherits this environment
  monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's mnistjax, not an installed one
  monkeypatch.delenv("MPLBACKEND", raising=False)  # as in a fresh Jupyter: its inline backend
  nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  errors = [(cell.source, output) for cell in code for output in cell.outputs
            if output.output_type == "error"]
  assert not errors
  plot_cells = [cell for cell in code
                if any(line.startswith("plots.") for line in cell.source.splitlines())]
  assert len(plot_cells) == 4  # loss curves, mistakes, accuracy against dropout, own model
  for cell in plot_cells:  # shown as an image, kept in the saved notebook
    assert any("image/png" in output.get("data", {}) for output in cell.outputs), cell.source
  # The progress as a notebook saves it: each bar's last state is the finished epoch.
  streams = "".join(_text(o) for cell in code for o in cell.outputs
                    if o.output_type == "stream" and o.name == "stdout")
  bars = [line.split("\r")[-1] for line in streams.split("\n") if "epoch 1/1" in line
          and "step" in line]
  assert len(bars) == 3 and all("100%" in bar for bar in bars), bars  # lenet, sweep, own
  assert "widget" not in json.dumps(notebook.cells)

  checks = json.loads(_text(code[-1].outputs[0]))
  assert checks["mnistjax"].startswith(str(ROOT))
  assert checks["epochs"] == [0, 1]
  assert checks["test_accuracy"] > 50  # it learned: 10000 images, one epoch (~77%)
  assert checks["members"] == [f"dropout={r}" for r in (0.0, 0.25, 0.5, 0.75)]
  assert checks["train_log"] > 0 and checks["predictions"] == [1, 1000]
  # The Flax quick start's CNN, its own optimiser, two seeds, resumed for a second epoch.
  assert checks["own"] == [["seed=0", 2], ["seed=1", 2]]
  assert checks["own_accuracy"] > 50


def test_a_notebook_progress_bar_is_text_left_at_its_end(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # in a kernel
  with driver._progress(157, "epoch 1/5") as bar:  # pylint: disable=protected-access
    for _ in range(157):
      bar.update(1)
  out = capsys.readouterr().out
  assert out.endswith("\n")  # left in place, not erased
  assert out.rstrip("\n").split("\r")[-1].startswith("epoch 1/5: 100%")
  assert "157/157" in out.split("\r")[-1]
