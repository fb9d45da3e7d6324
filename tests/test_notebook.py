"""notebooks/quickstart.ipynb runs: its code cells executed in order, on a slice of real MNIST
(MNISTJAX_QUICK=1), so that the notebook cannot rot."""

from __future__ import annotations

import ast
import json
import pathlib

import matplotlib.figure

ROOT = pathlib.Path(__file__).resolve().parents[1]


def code_cells(path: pathlib.Path) -> list[str]:
  """The code cells' sources, IPython magics and shell lines (% and !) left out: the install
  cell's `%pip install -e ..` is what this test's environment already did."""
  cells = json.loads(path.read_text())["cells"]
  return ["".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
          for cell in cells if cell["cell_type"] == "code"]


def test_the_quickstart_notebook_runs(mnist, tmp_path, monkeypatch):
  monkeypatch.setenv("MNISTJAX_QUICK", "1")
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  shown = []
  for source in code_cells(ROOT / "notebooks" / "quickstart.ipynb"):
    tree = ast.parse(source)
    # As IPython: a cell's last statement, if an expression, is evaluated and displayed.
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "quickstart.ipynb", "exec"), namespace)  # pylint: disable=exec-used
    if last is not None:
      shown.append(eval(compile(ast.Expression(last.value), "quickstart.ipynb", "eval"),
                        namespace))  # pylint: disable=eval-used
  figures = [x for x in shown if isinstance(x, matplotlib.figure.Figure)]
  assert len(figures) == 3  # loss curves, mistakes, accuracy against the dropout rate
  result, swept = namespace["result"], namespace["swept"]
  assert [r["epoch"] for r in result.history] == [0, 1]
  assert result.history[-1]["test_accuracy"] > 50  # it learned: 10000 images, one epoch (~77%)
  assert [r["member"] for r in swept.final] == [f"dropout={r}" for r in (0.0, 0.25, 0.5, 0.75)]
  assert result.train_log and result.predictions.shape == (1, 1000)
