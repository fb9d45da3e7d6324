"""The command-line programs: `run` (one run, a sweep or a study) and `reproduce` (every study
over seeds, against the notebooks' numbers).

experiments/run.py and experiments/reproduce.py start them from a clone; `mnistjax run|list|
reproduce` (the console script pip installs) and `python -m mnistjax` start them from an
installed package. Each program defines its flags only when it starts: the two share flag
names (--workdir) with different meanings, and absl's flags are global.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags

from mnistjax import cli

FLAGS = flags.FLAGS

RUN_DOC = """\
Trains a study of the notebooks (docs/studies.md), or any configuration, from the command line.

  {prog} --model=lenet --activation=sigmoid
  {prog} --study=s1_fashion_cnn3 --epochs=3 --workdir=runs/cnn3
  {prog} --sweep=dropout=0.25,0.5 --sweep=seed=0,1,2
  {prog} --list

Every setting is a flag (a field of mnistjax.config.Config). Without --study,
flags not given keep Config's defaults (study S0's protocol); with it, the
study's protocol. A workdir that holds an earlier run needs --resume (continue
it) or --overwrite (replace it). Bad input ends the run with one line on stderr
and exit status 2; a diverged run exits 3, Ctrl-C 130, SIGTERM 143, SIGHUP 129, each
keeping a resumable workdir.
"""

REPRODUCE_DOC = """\
Reproduces every study of the four notebooks over seeds and compares with their numbers.

  {prog}                      # every study, seeds 1,2,3
  {prog} --studies=s0_activation,s4_l2
  {prog} --quick --out=/tmp/quick   # a check of the pipeline, in minutes

Writes reproduction.json (every number, per seed), REPRODUCTION.md (one table per notebook:
variant | notebook | ours mean +- std | verdict) and reproduction/<study>.png into --out.
Each study is added to reproduction.json as it finishes, and a rerun skips the studies it
already holds: a long reproduction can run in parts, on several machines. Runs live in
--workdir/<study>/; an interrupted one continues from its last checkpoint. Bad input: one
line on stderr, exit 2; Ctrl-C: exit 130, keeping everything finished.
"""


def _no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])}; settings are given as --name=value")


# ----------------------------------------------------------------------------- run

RUN_FLAGS = ("study", "workdir", "resume", "overwrite", "sweep", "list")


def define_run_flags() -> None:
  """The run program's flags, then every Config field's."""
  from mnistjax import config  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("study", None, "a named study of the notebooks (see --list and "
                      "docs/studies.md)")
  flags.DEFINE_string("workdir", None, "write config, metrics, plots and checkpoints here")
  flags.DEFINE_bool("resume", False, "continue from the workdir's last checkpoint")
  flags.DEFINE_bool("overwrite", False, "replace the workdir's earlier run (kept aside until "
                    "this run has its first checkpoint)")
  flags.DEFINE_bool("list", False, "print the models, optimisers and studies, then exit")
  flags.DEFINE_multi_string("sweep", [], "SETTING=V1,V2,...: train every value together in "
                            "one compiled program; repeat for a product (settings: "
                            "dropout, lr, weight_decay, momentum, l2, seed)")
  config.define_flags()


def run_main(argv: list[str]) -> None:
  """One run, a sweep or a study, as the flags say."""
  from mnistjax import config, driver, parallel, studies  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  if FLAGS.list:
    print(cli.listing())
    return
  with cli.user_errors():
    parallel.initialize_distributed()  # a multi-host job: JAX_COORDINATOR_ADDRESS, SLURM, MPI
    axes = config.parse_sweep(FLAGS.sweep)
    if FLAGS.study:
      studies.run_study(FLAGS.study, config.flag_overrides(), FLAGS.workdir, FLAGS.resume,
                        sweep=axes, overwrite=FLAGS.overwrite)
    else:
      driver.train(config.from_flags(), axes or None, FLAGS.workdir, resume=FLAGS.resume,
                   overwrite=FLAGS.overwrite)


# ----------------------------------------------------------------------------- reproduce

REPRODUCE_FLAGS = ("studies", "seeds", "workdir", "out", "quick", "redo")


def define_reproduce_flags() -> None:
  """The reproduce program's flags."""
  from mnistjax import reproduction  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("studies", list(reproduction.STUDIES), "the studies to run (default: all)")
  flags.DEFINE_list("seeds", [str(s) for s in reproduction.SEEDS], "the seeds of every "
                    "variant (--quick: the first two)")
  flags.DEFINE_string("workdir", "runs/reproduce", "the runs' folders (one per study)")
  flags.DEFINE_string("out", None, "where reproduction.json, REPRODUCTION.md and the figures "
                      "go (default: the current folder; with --quick, the workdir)")
  flags.DEFINE_bool("quick", False, "small slices, 1 epoch: checks the pipeline, not the "
                    "numbers")
  flags.DEFINE_bool("redo", False, "run the studies again even where the report holds them")


def reproduce_main(argv: list[str]) -> None:
  """The studies over seeds, their report and figures."""
  from mnistjax import reproduction, reproduction_report  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  with cli.user_errors():
    try:
      seeds = tuple(int(s) for s in FLAGS.seeds)
      if FLAGS.quick and not FLAGS["seeds"].present:
        seeds = seeds[:2]
    except ValueError:
      cli.fail(f"--seeds={','.join(FLAGS.seeds)}: give integers, e.g. --seeds=1,2,3")
    out = FLAGS.out or (FLAGS.workdir if FLAGS.quick else ".")
    report = reproduction.reproduce(tuple(FLAGS.studies), seeds, FLAGS.workdir, out,
                                    FLAGS.quick, FLAGS.redo)
    reproduction_report.write(report.body, report.path.parent)


# ----------------------------------------------------------------------------- starting

PROGRAMS = {  # name: (define its flags, its main, its --help text, its own flags)
    "run": (define_run_flags, run_main, RUN_DOC, RUN_FLAGS),
    "reproduce": (define_reproduce_flags, reproduce_main, REPRODUCE_DOC, REPRODUCE_FLAGS),
}


def start(name: str, prog: str) -> None:
  """Runs the program `name` on sys.argv's flags and exits with its status; prog is how
  --help's examples start it (`python experiments/run.py`, `mnistjax run`)."""
  define, main, doc, own_flags = PROGRAMS[name]
  define()
  try:
    app.run(main, flags_parser=functools.partial(
        cli.parse_flags, doc=doc.format(prog=prog), main_flags=own_flags))
  except SystemExit as e:
    if cli.stopped_by_a_signal(e.code):
      cli.exit_now(e.code)
    raise
  finally:
    cli.exit_at_once_on_a_signal()


USAGE = """\
usage: mnistjax COMMAND [--flag=value ...]

  mnistjax run [flags]          train a configuration, a sweep or a study (--help: the flags)
  mnistjax list                 the models, optimisers and studies
  mnistjax reproduce [flags]    the studies over seeds, against the notebooks' numbers

`python -m mnistjax` is the same program; experiments/run.py and experiments/reproduce.py
in a clone are `mnistjax run` and `mnistjax reproduce`."""


def main() -> None:
  """The console script `mnistjax` (and `python -m mnistjax`): a command, then its flags."""
  command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else (None, [])
  if command in cli.HELP_FLAGS:
    print(USAGE)
    sys.exit(0)
  if command == "list":
    command, rest = "run", ["--list", *rest]
  if command not in PROGRAMS:
    sys.argv[0] = "mnistjax"  # `python -m mnistjax` would name __main__.py in the error
    cli.fail("give a command: run, list or reproduce (mnistjax --help)" if command is None
             else f"unknown command '{command}'; choose one of: run, list, reproduce")
  # The errors then start "mnistjax run: error: ...", naming the command that failed.
  sys.argv = [f"mnistjax {command}", *rest]
  start(command, f"mnistjax {command}")
