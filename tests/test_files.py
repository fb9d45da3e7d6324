"""Crash-safe files: a failed write keeps the old file, a torn line is dropped and cut off,
records are strict JSON, and the lock lets one holder in and names it."""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest

from mnistjax import files
from mnistjax.errors import WorkdirError

ROOT = pathlib.Path(__file__).resolve().parents[1]


# Whole files, written atomically.


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  files.write_json(path, {"epoch": 1})
  old = path.read_text()

  def disk_full(fd):  # the new content is in the temp file; the disk refuses to keep it
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", disk_full)
  with pytest.raises(WorkdirError, match=r"^\S*summary.json: No space left on device while "
                     r"writing it; free space on that disk$"):
    files.write_json(path, {"epoch": 2})
  assert path.read_text() == old
  assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_written_file_gets_the_mode_open_gives(tmp_path):
  path = tmp_path / "loss.png"
  files.write_bytes(path, b"\x89PNG")
  assert path.read_bytes() == b"\x89PNG"
  mode = 0o666 & ~files._umask()  # pylint: disable=protected-access
  assert stat.S_IMODE(path.stat().st_mode) == mode


def test_records_are_strict_json(tmp_path):
  record = {"loss": float("nan"), "curve": [1.5, float("inf"), -math.inf], "pair": (0.5,)}
  assert files.dumps(record, sort_keys=True) == \
      '{"curve": [1.5, null, null], "loss": null, "pair": [0.5]}'

  def refuse(constant):
    raise ValueError(constant)

  path = tmp_path / "summary.json"
  files.write_json(path, record)
  assert json.loads(path.read_text(), parse_constant=refuse)["loss"] is None
  files.append_jsonl(tmp_path / "metrics.jsonl", record)
  assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse) == \
      {"curve": [1.5, None, None], "loss": None, "pair": [0.5]}


# .jsonl records.


def test_a_torn_last_line_is_dropped_and_cut_off_before_the_next_append(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')  # a write cut short
  assert files.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
  files.append_jsonl(path, {"epoch": 2})
  assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n'
  files.append_line(tmp_path / "log.txt", "first")
  files.append_line(tmp_path / "log.txt", "second")
  assert (tmp_path / "log.txt").read_text() == "first\nsecond\n"
  assert files.read_jsonl(tmp_path / "missing.jsonl") == []


def test_a_damaged_middle_line_is_one_line_naming_the_fix(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
  with pytest.raises(WorkdirError, match=r"^\S*metrics.jsonl: line 2 is not JSON; the file was "
                     r"edited or damaged: restore it, or start the run again with --overwrite$"):
    files.read_jsonl(path)


def test_write_jsonl_replaces_the_records(tmp_path):
  path = tmp_path / "train_log.jsonl"
  files.append_jsonl(path, {"step": 1})
  files.write_jsonl(path, [{"step": 2, "loss": float("nan")}, {"step": 3}])
  assert files.read_jsonl(path) == [{"loss": None, "step": 2}, {"step": 3}]


def test_a_folder_where_a_file_is_is_one_line(tmp_path):
  (tmp_path / "run").write_text("")
  with pytest.raises(WorkdirError, match=r"is a file, not a folder; give a folder$"):
    files.make_folder(tmp_path / "run")
  assert files.make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
  assert (tmp_path / "a" / "b").is_dir()


# The lock.


def test_the_lock_refuses_a_second_open_file_and_names_its_holder(tmp_path):
  path = tmp_path / ".lock"
  first = files.Lock(path, "run")
  assert first.acquire(wait=False)
  second = files.Lock(path, "run")  # this process, but another open file: flock refuses it
  assert not second.acquire(wait=False)
  assert second.holder().startswith(f"run {os.getpid()} on {socket.gethostname()} since ")
  first.release()
  assert second.acquire(wait=False)
  second.release()


def test_a_waiting_lock_takes_it_once_its_holder_lets_go(tmp_path):
  path = tmp_path / ".lock"
  got = threading.Event()

  def wait_for_it():
    with files.Lock(path):
      got.set()

  with files.Lock(path):
    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert not got.wait(0.5)  # still held
  assert got.wait(30)
  waiter.join()


def test_the_lock_refuses_another_process_and_goes_with_it_when_it_is_killed(tmp_path):
  path = tmp_path / ".lock"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mnistjax import files; "
       "lock = files.Lock(sys.argv[1], 'run'); assert lock.acquire(wait=False); "
       "print('held', flush=True); "
       "time.sleep(600)", str(path)],
      stdout=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline() == "held\n"
    lock = files.Lock(path, "run")
    assert not lock.acquire(wait=False)
    assert lock.holder().startswith(f"run {holder.pid} on {socket.gethostname()} since ")
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()
  assert lock.acquire(wait=False)  # the kernel dropped the dead holder's lock
  lock.release()


# Where there is no fcntl (Windows), files.py locks through msvcrt. This Linux stands in for it:
# `import fcntl` fails (None in sys.modules) and an msvcrt module locks a handle's byte as
# Windows' does, one holder per open file, through the flock(2) taken before fcntl went away.
# mnistjax's dependencies are imported first: with an msvcrt, the standard library (subprocess)
# takes its Windows paths, which need Windows; what they do there is theirs to handle.
WITHOUT_FCNTL = """
import errno, subprocess, sys, threading, time, types
import absl.flags, flax, jax, numpy, optax, orbax.checkpoint, tqdm
import fcntl as real_fcntl
sys.modules["fcntl"] = None
msvcrt = sys.modules["msvcrt"] = types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2
calls = []
def locking(fd, mode, nbytes):
  calls.append(mode)
  assert nbytes == 1
  try:
    real_fcntl.flock(fd, real_fcntl.LOCK_UN if mode == msvcrt.LK_UNLCK
                     else real_fcntl.LOCK_EX | real_fcntl.LOCK_NB)
  except BlockingIOError:
    raise OSError(errno.EACCES, "Permission denied") from None
msvcrt.locking = locking

import mnistjax
from mnistjax import files
assert files.fcntl is None
path = sys.argv[1]
first, second = files.Lock(path, "run"), files.Lock(path, "run")
assert first.acquire(wait=False)
assert not second.acquire(wait=False)
assert second.holder().startswith("run "), second.holder()
threading.Timer(0.5, first.release).start()
started = time.perf_counter()
assert second.acquire(wait=True)  # waits for the release
assert time.perf_counter() - started > 0.3
second.release()
assert msvcrt.LK_UNLCK in calls
with files.Lock(path, "run"):
  pass
print("locked without fcntl")
"""


def test_mnistjax_imports_and_locks_where_there_is_no_fcntl(tmp_path):
  result = subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path / ".lock")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == "locked without fcntl"


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path):
  with pytest.raises(WorkdirError, match=r"^\S*missing/.lock: No such file or directory while "
                     r"locking it; choose another --workdir$"):
    files.Lock(tmp_path / "missing" / ".lock").acquire()
