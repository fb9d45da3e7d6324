"""The command-line programs from an installed package: `python -m mnistjax` and the console
script `mnistjax` run what experiments/run.py and experiments/reproduce.py run, with the same
flags, one-line errors and exit statuses."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from mnistjax import files, models, reproduction, step, studies

ROOT = pathlib.Path(__file__).resolve().parents[1]


def mnistjax(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
  """`python -m mnistjax ARGS` on this checkout (run from ROOT, which -m puts on sys.path)."""
  return subprocess.run([sys.executable, "-m", "mnistjax", *args], capture_output=True,
                        text=True, timeout=300, cwd=cwd)


def script(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("args,line", [
    ([], "mnistjax: error: give a command: run, list or reproduce (mnistjax --help)"),
    (["train"], "mnistjax: error: unknown command 'train'; choose one of: run, list, reproduce"),
    (["run", "--model=resnet"], "mnistjax run: error: --model=resnet"),
    (["run", "extra"], "mnistjax run: error: unexpected arguments extra; settings are given as "
                       "--name=value"),
    (["reproduce", "--studies=s9"], "mnistjax reproduce: error: --studies: unknown s9; choose "
                                    "from " + ", ".join(reproduction.STUDIES)),
])
def test_bad_commands_and_flags_are_one_line_with_status_2(args, line):
  result = mnistjax(*args)
  assert result.returncode == 2, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
  assert result.stderr.startswith(line), result.stderr


def test_help_names_the_commands():
  result = mnistjax("--help")
  assert result.returncode == 0 and not result.stderr
  for command in ("mnistjax run", "mnistjax list", "mnistjax reproduce"):
    assert command in result.stdout


def test_list_is_run_dash_dash_list():
  listed = mnistjax("list")
  assert listed.returncode == 0, listed.stderr
  for name in [*models.MODELS, *step.OPTIMIZERS, *studies.STUDIES]:
    assert f"  {name} " in listed.stdout
  assert listed.stdout == script("run.py", "--list").stdout


@pytest.mark.parametrize("command,name", [("run", "run.py"), ("reproduce", "reproduce.py")])
def test_the_commands_take_the_scripts_flags(command, name):
  """--help lists a program's every flag: the same for the command and the script, whose
  examples only start it another way."""
  ours, theirs = mnistjax(command, "--help"), script(name, "--help")
  assert ours.returncode == theirs.returncode == 0
  assert ours.stdout == theirs.stdout.replace(f"python experiments/{name}", f"mnistjax {command}")
  assert f"  mnistjax {command} --" in ours.stdout
  flags = ["--study", "--sweep", "--model", "--lr", "--epochs"] if command == "run" else [
      "--studies", "--seeds", "--quick", "--redo", "--out"]
  for flag in flags:
    assert f"\n  {flag}" in ours.stdout or f"\n  --[no]{flag[2:]}" in ours.stdout, flag


def _install(tmp_path: pathlib.Path) -> pathlib.Path:
  """A fresh venv holding mnistjax as `pip install .` installs it (not editable), its
  dependencies and build backend seen from this interpreter's site-packages, so nothing is
  downloaded; returns the venv's bin folder."""
  source = tmp_path / "source"  # a copy: pip builds in the tree, and this clone stays clean
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / "mnistjax", source / "mnistjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=300)
  bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
  site = subprocess.run([bin_dir / "python", "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  # Path lines in a .pth file: this interpreter's packages come after the venv's own, and
  # their .pth hooks (an editable mnistjax's among them) are not run.
  paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
  pathlib.Path(site, "dependencies.pth").write_text("\n".join(paths) + "\n")
  installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"),
                              "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                              str(source)], capture_output=True, text=True, timeout=600)
  assert installed.returncode == 0, installed.stdout + installed.stderr
  return bin_dir


@pytest.mark.slow
def test_an_installed_package_runs_the_studies_from_anywhere(mnist, tmp_path):
  bin_dir = _install(tmp_path)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

  def console(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "mnistjax"), *args], capture_output=True, text=True,
                          timeout=900, cwd=elsewhere, env=env)

  where = subprocess.run([str(bin_dir / "python"), "-c", "import mnistjax; print(mnistjax.__file__)"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, check=True)
  assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout  # not this clone's
  listed = console("list")
  assert listed.returncode == 0, listed.stderr
  assert "  lenet " in listed.stdout and "  s0_activation " in listed.stdout
  run = console("run", "--train_limit=640", "--test_limit=100", "--epochs=1", "--workdir=run")
  assert run.returncode == 0, run.stderr
  assert "epoch   1 |" in run.stdout
  assert [r["epoch"] for r in files.read_jsonl(elsewhere / "run" / "metrics.jsonl")] == [0, 1]
  assert (elsewhere / "run" / "loss.png").exists()
  quick = console("reproduce", "--quick", "--studies=s0_activation", "--workdir=work",
                  "--out=report")
  assert quick.returncode == 0, quick.stderr
  body = json.loads((elsewhere / "report" / "reproduction.json").read_text())
  assert body["quick"] and list(body["studies"]) == ["s0_activation"]
  assert (elsewhere / "report" / "REPRODUCTION.md").exists()
