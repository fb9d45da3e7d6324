"""Checkpoint integrity: each checkpoint carries a checksum of its arrays and record; a damaged
or incomplete latest one is named and the run goes on from the newest intact one; folders
that are not checkpoints are ignored."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

import mnistjax
from conftest import synthetic
from mnistjax import checkpoint, driver, files
from mnistjax import config as config_lib
from mnistjax.errors import WorkdirError

CFG = config_lib.Config(epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The states of an uninterrupted 3-epoch run (what every resumed run must end with)."""
  return driver.train(CFG, None, str(tmp_path_factory.mktemp("straight")), synthetic(),
                      log=lambda line: None).state


def saved_epochs(ckpts: pathlib.Path) -> list[int]:
  """The checkpoints' epochs, newest first: folders named by a number that hold files."""
  return sorted((int(p.name) for p in ckpts.iterdir() if p.name.isdigit() and any(p.iterdir())),
                reverse=True)


def three_epochs(folder: pathlib.Path) -> pathlib.Path:
  driver.train(CFG, None, str(folder), synthetic(), log=lambda line: None)
  assert saved_epochs(folder / "checkpoints") == [3, 2]
  return folder / "checkpoints"


def flip_a_byte_of_the_arrays(ckpt: pathlib.Path) -> None:
  data = max((p for p in (ckpt / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)  # the arrays' data, the largest file
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  data.write_bytes(bytes(raw))


def delete_the_manifest(ckpt: pathlib.Path) -> None:
  (ckpt / "state" / "manifest.ocdbt").unlink()  # the root of orbax's array store


def edit_the_record(ckpt: pathlib.Path) -> None:
  edited = 0
  for path in (ckpt / "record").rglob("*"):
    if path.is_file() and b"examples_seen" in path.read_bytes():
      record = json.loads(path.read_text())
      record["examples_seen"] += 32
      path.write_text(json.dumps(record))
      edited += 1
  assert edited == 1


def resume(folder: pathlib.Path, lines: list[str], epochs: int = 3):
  return driver.train(CFG.replace(epochs=epochs), None, str(folder), synthetic(), resume=True,
                      log=lines.append)


@pytest.mark.parametrize("damage", [flip_a_byte_of_the_arrays, delete_the_manifest,
                                    edit_the_record])
def test_a_damaged_latest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(
    tmp_path, straight, damage):
  ckpts = three_epochs(tmp_path)
  damage(ckpts / "3")
  lines = []
  resumed = resume(tmp_path, lines)
  named = [line for line in lines if " is damaged (" in line]
  assert len(named) == 1 and "the checkpoint of epoch 3" in named[0], lines
  assert "continuing from the checkpoint of epoch 2" in named[0]
  assert any("resumed from the checkpoint of epoch 2" in line for line in lines)
  # The records past the checkpoint it resumed from were dropped, and epoch 3 trained again.
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert saved_epochs(ckpts) == [3, 2]  # its own epoch 3; the damaged one set aside
  assert (ckpts / "3.damaged").is_dir()
  mnistjax.load(tmp_path)  # the new latest is intact


def test_no_intact_checkpoint_is_one_line_with_the_fix(tmp_path):
  ckpts = three_epochs(tmp_path)
  flip_a_byte_of_the_arrays(ckpts / "3")
  delete_the_manifest(ckpts / "2")
  with pytest.raises(WorkdirError) as error:
    resume(tmp_path, [])
  message = str(error.value)
  assert "\n" not in message and "epoch 3" in message and "epoch 2" in message
  assert "--overwrite" in message
  assert saved_epochs(ckpts) == [3, 2]  # nothing was set aside


def test_load_refuses_a_damaged_latest_checkpoint_in_one_line(tmp_path):
  ckpts = three_epochs(tmp_path)
  flip_a_byte_of_the_arrays(ckpts / "3")
  with pytest.raises(WorkdirError) as error:
    mnistjax.load(tmp_path)
  assert "\n" not in str(error.value) and "epoch 3" in str(error.value)
  assert "--resume" in str(error.value)


def test_a_folder_that_is_no_checkpoint_is_ignored(tmp_path):
  ckpts = three_epochs(tmp_path)
  (ckpts / "7").mkdir()
  assert checkpoint.latest_epoch(ckpts) == 3  # not 7
  lines = []
  resumed = resume(tmp_path, lines, epochs=4)
  assert any("resumed from the checkpoint of epoch 3" in line for line in lines), lines
  assert saved_epochs(ckpts) == [4, 3]  # the run saved its own epoch again
  assert resumed.final[0]["epoch"] == 4
