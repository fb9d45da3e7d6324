"""Trains a study of the notebooks (docs/studies.md), or any configuration, from the command line.

  python experiments/run.py --model=lenet --activation=sigmoid
  python experiments/run.py --study=s1_fashion_cnn3 --epochs=3 --workdir=runs/cnn3
  python experiments/run.py --sweep=dropout=0.25,0.5 --sweep=seed=0,1,2
  python experiments/run.py --list

Every setting is a flag (a field of mnistjax.config.Config). Without --study,
flags not given keep Config's defaults (study S0's protocol); with it, the
study's protocol. A workdir that holds an earlier run needs --resume (continue
it) or --overwrite (replace it). Bad input ends the run with one line on stderr
and exit status 2; a diverged run exits 3, Ctrl-C 130, SIGTERM 143, SIGHUP 129, each
keeping a resumable workdir.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags

from mnistjax import cli, config, driver, parallel, studies

flags.DEFINE_string("study", None, "a named study of the notebooks (see --list and "
                    "docs/studies.md)")
flags.DEFINE_string("workdir", None, "write config, metrics, plots and checkpoints here")
flags.DEFINE_bool("resume", False, "continue from the workdir's last checkpoint")
flags.DEFINE_bool("overwrite", False, "replace the workdir's earlier run (kept aside until "
                  "this run has its first checkpoint)")
flags.DEFINE_bool("list", False, "print the models, optimisers and studies, then exit")
flags.DEFINE_multi_string("sweep", [], "SETTING=V1,V2,...: train every value together in one "
                          "compiled program; repeat for a product (settings: "
                          "dropout, lr, weight_decay, momentum, l2, seed)")
config.define_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])}; settings are given as --name=value")
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


if __name__ == "__main__":
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, doc=__doc__,
      main_flags=("study", "workdir", "resume", "overwrite", "sweep", "list")))
  sys.exit(0)
