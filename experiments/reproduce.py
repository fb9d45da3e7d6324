"""Reproduces every study of the four notebooks over seeds and compares with their numbers.

  python experiments/reproduce.py                      # every study, seeds 1,2,3
  python experiments/reproduce.py --studies=s0_activation,s4_l2
  python experiments/reproduce.py --quick --out=/tmp/quick   # the pipeline in a minute

Writes reproduction.json (every number, per seed), REPRODUCTION.md (one table per notebook:
variant | notebook | ours mean +- std | verdict) and reproduction/<study>.png into --out.
Each study is added to reproduction.json as it finishes, and a rerun skips the studies it
already holds: a long reproduction can run in parts, on several machines. Runs live in
--workdir/<study>/; an interrupted one continues from its last checkpoint. Bad input: one
line on stderr, exit 2; Ctrl-C: exit 130, keeping everything finished.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags

from mnistjax import cli, reproduction, reproduction_report

flags.DEFINE_list("studies", list(reproduction.STUDIES), "the studies to run (default: all)")
flags.DEFINE_list("seeds", [str(s) for s in reproduction.SEEDS], "the seeds of every variant "
                  "(--quick: the first two)")
flags.DEFINE_string("workdir", "runs/reproduce", "the runs' folders (one per study)")
flags.DEFINE_string("out", None, "where reproduction.json, REPRODUCTION.md and the figures go "
                    "(default: the current folder; with --quick, the workdir)")
flags.DEFINE_bool("quick", False, "small slices, 1 epoch: checks the pipeline, not the numbers")
flags.DEFINE_bool("redo", False, "run the studies again even where the report holds them")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])}; settings are given as --name=value")
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


if __name__ == "__main__":
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, doc=__doc__,
      main_flags=("studies", "seeds", "workdir", "out", "quick", "redo")))
  sys.exit(0)
