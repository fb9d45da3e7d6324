"""The reproduction report: its verdict rule, and experiments/reproduce.py --quick end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import pytest

from mnistjax import files, reproduction, reproduction_report, studies
from mnistjax.errors import ConfigError, WorkdirError

from test_cli import ROOT  # pylint: disable=g-bad-import-order


def test_interval_is_the_student_t_prediction_interval():
  values = [98.0, 98.2, 98.4]  # mean 98.2, sd 0.2
  lo, hi = reproduction.interval(values, True, 10000)
  half = 4.303 * 0.2 * math.sqrt(1 + 1 / 3)
  assert lo == pytest.approx(98.2 - half) and hi == pytest.approx(98.2 + half)
  # Seeds that agree by chance: the test set's sampling error is the floor of the spread.
  lo, hi = reproduction.interval([99.0, 99.0, 99.0], True, 10000)
  floor = 100 * math.sqrt(0.99 * 0.01 / 10000)
  assert hi - 99.0 == pytest.approx(4.303 * floor * math.sqrt(4 / 3))
  # The notebook number's own uncertainty widens it; a loss has no sampling floor.
  lo, hi = reproduction.interval([0.5, 0.5, 0.5], False, 10000, notebook_sem=0.1)
  assert hi - 0.5 == pytest.approx(4.303 * 0.1)
  assert reproduction.interval([98.0], True, 10000) is None


def test_verdicts():
  ours = [98.0, 98.2, 98.4]
  assert reproduction.verdict("s0_activation", "activation=relu", ours, 99.1, True,
                              10000)["verdict"] == "reproduced"
  assert reproduction.verdict("s0_activation", "activation=relu", ours, 99.3, True,
                              10000)["verdict"] == "differs"
  expected = reproduction.verdict("s4_activation", "activation=sigmoid", [90.0, 90.5, 91.0],
                                  79.66, True, 10000)
  assert expected["verdict"] == "differs as expected"
  assert expected["reason"] == studies.STUDIES["s4_activation"].expected["activation=sigmoid"]
  assert reproduction.verdict("s1_lr_wd", "lr=0.1,weight_decay=0.4", ours, None, True,
                              10000)["verdict"] == "no notebook number"
  assert reproduction.verdict("s0_activation", "activation=relu", [98.0], 98.0, True,
                              10000)["verdict"] == "one seed: no interval"


def test_curve_counts_the_epochs_inside():
  ours = [[96.0, 98.0, 99.0], [96.2, 98.2, 99.2], [96.4, 98.4, 99.4]]
  curve = reproduction.curve_within(ours, [96.2, 90.0, 99.2], 10000)
  assert curve == {"inside": [True, False, True], "epochs": 3, "within": 2}


def test_reference_names_every_variant_of_its_study():
  """A typo in a variant name would leave a study without its notebook numbers."""
  for name in reproduction.STUDIES:
    study = studies.lookup(name)
    variants = {studies.variant_name(v) for v in study.variants}
    assert set(study.numbers) <= variants, name
    assert set(study.expected) <= variants, name
  assert set(reproduction.STUDIES) == set(studies.STUDIES) - {"speedrun"}


def test_every_study_runs_over_the_seeds():
  for name in reproduction.STUDIES:
    for run in reproduction.study_runs(name, (1, 2, 3), quick=False):
      assert run.axes["seed"] == (1, 2, 3)
      assert run.config.epochs == (1 if name.startswith("s2")
                                   else studies.lookup(name).config.epochs)


# A run of each kind: variants one after another with per-epoch curves (s0_activation), one
# sweep with a heatmap (s1_lr_wd), a loss with a quirk rerun (s2_rmsprop), a sweep with S4's
# per-class F1 (s4_l2). The slow test runs all twelve.
KINDS = ("s0_activation", "s1_lr_wd", "s2_rmsprop", "s4_l2")


def _quick_end_to_end(names, tmp_path, monkeypatch):
  # A notebook loss that 640 images can't come near: s2_rmsprop differs, so its quirk runs.
  monkeypatch.setitem(studies.STUDIES["s2_rmsprop"].numbers, "base",
                      {"train_loss_epoch1": 1000.0, "train_loss_epoch1_sem": 0.0})
  lines = []
  report = reproduction.reproduce(names, seeds=(1, 2), workdir=str(tmp_path / "runs"),
                                  out=str(tmp_path), quick=True, log=lines.append)
  reproduction_report.write(report.body, tmp_path, log=lines.append)
  body = json.loads((tmp_path / "reproduction.json").read_text())
  assert body == json.loads(json.dumps(report.body))
  assert sorted(body["studies"]) == sorted(names)
  for name, entry in body["studies"].items():
    expected = {studies.variant_name(v) for v in studies.lookup(name).variants}
    assert set(entry["variants"]) == expected, name
    for variant in entry["variants"].values():
      assert variant["seeds"] == [1, 2] and len(variant["test_accuracy"]) == 2, name
    assert (tmp_path / "reproduction" / f"{name}.png").stat().st_size > 1000
  assert any(line.startswith(f"[1/{len(names)}] {names[0]}") and "left" in line
             for line in lines)
  # A pipeline check: no verdict on numbers of 640 images and one epoch, and it says so.
  assert not any(word in line for line in lines for word in ("(reproduced)", "(differs"))
  assert any(reproduction.NO_VERDICT in line and "without --quick" in line for line in lines)
  text = (tmp_path / "REPRODUCTION.md").read_text()
  for name in names:
    assert f"### {name}: " in text and f"(reproduction/{name}.png)" in text
  # s2_rmsprop differs: the notebook's own quirk was run over the same seeds.
  quirk = body["studies"]["s2_rmsprop"]["quirk"]
  assert quirk["changes"] == {"zero_grad": False} and quirk["variants"]["base"]["seeds"] == [1, 2]
  assert "Run again with the notebook's own zero_grad=False: " in text
  return lines, report, body


def test_quick_reproduction_end_to_end(mnist, tmp_path, monkeypatch):
  """--quick: studies of every kind over two seeds, then the report, tables and figures; a
  rerun skips what the report holds, and a study missing from it loads its finished runs."""
  del mnist  # the data must be there
  lines, report, body = _quick_end_to_end(KINDS, tmp_path, monkeypatch)
  text = (tmp_path / "REPRODUCTION.md").read_text()
  assert "| activation=sigmoid | final test accuracy % | 85.29 |" in text
  assert "| training loss, end of epoch 1 | 1000.000 |" in text
  assert "Per-class F1 on the test set" in text

  lines.clear()  # everything is in the report: nothing runs
  reproduction.reproduce(KINDS, seeds=(1, 2), workdir=str(tmp_path / "runs"),
                         out=str(tmp_path), quick=True, log=lines.append)
  assert lines[0].startswith("in ") and "(skipped)" in lines[0]
  assert not any("member(s) in one program" in line for line in lines)

  del body["studies"]["s4_l2"]  # as if stopped after its runs, before the report
  (tmp_path / "reproduction.json").write_text(json.dumps(body))
  lines.clear()
  again = reproduction.reproduce(("s4_l2",), (1, 2), str(tmp_path / "runs"), str(tmp_path),
                                 quick=True, log=lines.append)
  assert any("finished earlier: loaded" in line for line in lines)
  assert again.body["studies"]["s4_l2"]["variants"] == report.body["studies"]["s4_l2"]["variants"]

  with pytest.raises(ConfigError, match="--seeds=1,2 to continue"):
    reproduction.reproduce(("s4_l2",), (1, 2, 3), str(tmp_path / "runs"), str(tmp_path),
                           quick=True, log=lines.append)


@pytest.mark.slow
def test_quick_reproduction_of_every_study(mnist, tmp_path, monkeypatch):
  del mnist
  _quick_end_to_end(reproduction.STUDIES, tmp_path, monkeypatch)


def test_adding_a_study_waits_for_the_report_lock_and_keeps_the_others_studies(tmp_path):
  path = tmp_path / "reproduction.json"
  report = reproduction.Report.open(path, (1, 2), quick=True)
  adder = threading.Thread(target=report.add, args=("s0_init", {"seconds": 1.0}))
  with files.Lock(tmp_path / ".reproduction.lock"):  # another process, adding its own study
    adder.start()
    adder.join(0.5)
    assert adder.is_alive() and not path.exists()  # waiting for the lock
    files.write_json(path, {**report.body, "studies": {"s0_dropout": {"seconds": 2.0}}})
  adder.join(30)
  assert json.loads(path.read_text())["studies"] == {"s0_dropout": {"seconds": 2.0},
                                                     "s0_init": {"seconds": 1.0}}


def test_markdown_shows_a_diagnosis_for_every_difference():
  entry = _s0_init_entry()
  entry["variants"]["batchnorm=False,init=xavier_normal"]["train_accuracy_by_epoch"] = [
      [97.0, 98.0, 98.7, 98.9, 99.2], [97.1, 98.1, 98.8, 99.0, 99.25],
      [97.2, 98.2, 98.9, 99.1, 99.3]]
  entry["compared"] = reproduction.compare("s0_init", entry["variants"], 10000)
  body = {"seeds": [1, 2, 3], "quick": False, "studies": {"s0_init": entry}}
  text = reproduction_report.markdown(body)
  assert "| differs; diverged in 1 of 3 seeds | 4/5 inside |" in text
  assert ("ours is higher (98.95 vs 98.17). Per epoch, the notebook's test accuracy lies "
          "inside our interval at 4 of 5 epochs (outside: epoch 5).") in text
  # The notebook's 98.75 final train accuracy lies below ours (99.25 +- 0.05, floored at the
  # sampling error): a sentence of what was measured, its gap and its curve.
  assert ("final train accuracy %**: ours is higher (99.25 vs 98.75). Train minus test "
          "accuracy: ours 0.30, the notebook's 0.58 (test accuracy differs). Per epoch, the "
          "notebook's train accuracy lies inside our interval at ") in text


def _s0_init_entry() -> dict:
  entry = {"description": "d", "test_examples": 10000, "seconds": 1.0, "machine": "m",
           "finished": "t", "variants": {
               "batchnorm=False,init=xavier_normal": {
                   "seeds": [1, 2, 3], "test_accuracy": [98.9, 98.95, 99.0],
                   "diverged": [False, True, False], "train_accuracy": [99.2, 99.25, 99.3],
                   "test_accuracy_by_epoch": [[96.0, 98.1, 98.4, 98.8, 98.9],
                                              [96.1, 98.2, 98.5, 98.85, 98.95],
                                              [96.2, 98.3, 98.6, 98.9, 99.0]]}}}
  entry["compared"] = reproduction.compare("s0_init", entry["variants"], 10000)
  return entry


def test_a_quick_report_is_a_pipeline_check_without_verdicts_or_full_data_claims():
  entry = _s0_init_entry()
  full = reproduction_report.markdown({"seeds": [1, 2, 3], "quick": False,
                                       "studies": {"s0_init": entry}})
  assert "| differs; diverged in 1 of 3 seeds |" in full and "whole test (10,000)" in full
  text = reproduction_report.markdown({"seeds": [1, 2, 3], "quick": True,
                                       "studies": {"s0_init": entry}})
  assert text.startswith("# Reproduction of the four notebooks: pipeline check (--quick)\n")
  assert "**A pipeline check, not a reproduction.**" in text
  assert "first 640 training images" in text and "first 500 test images" in text
  table = [line for line in text.splitlines() if line.startswith("| batchnorm=False")
           or line.startswith("|  |")]
  assert table and all(f"| {reproduction.NO_VERDICT}" in line for line in table), table
  assert "| pipeline check (--quick): no verdict; diverged in 1 of 3 seeds |" in text
  for claim in ("reproduced", "differs;", "differs as expected", "**Verdict.**",
                "whole test (10,000)", "inside"):
    assert claim not in text, claim


def test_command_line_errors_are_one_line(tmp_path):
  script = str(ROOT / "experiments" / "reproduce.py")
  bad = subprocess.run([sys.executable, script, "--studies=s9", f"--out={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "reproduce.py: error: --studies: unknown s9; choose from " + ", ".join(reproduction.STUDIES)]
  helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
  assert helped.returncode == 0 and "--seeds" in helped.stdout and "--quick" in helped.stdout


@pytest.mark.parametrize("body,fragment", [
    ([1, 2], 'an object with "studies"'),
    ({"seeds": [1, 2], "quick": True}, 'an object with "studies"'),
    ({"seeds": [1, 2], "quick": True, "studies": {"../../x": {}}}, "'../../x'"),
])
def test_a_report_that_is_not_one_is_one_line_and_writes_nothing_outside(tmp_path, body,
                                                                          fragment):
  out = tmp_path / "out" / "report"
  out.mkdir(parents=True)
  path = out / "reproduction.json"
  path.write_text(json.dumps(body))
  with pytest.raises(WorkdirError) as error:
    reproduction.Report.open(path, (1, 2), quick=True)
  assert "\n" not in str(error.value) and fragment in str(error.value)
  assert "move it aside" in str(error.value)
  if isinstance(body, dict) and "studies" in body:  # the report's writer refuses it too
    with pytest.raises(WorkdirError, match="not ours"):
      reproduction_report.write(body, out, log=lambda line: None)
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "report", "reproduction.json"]
