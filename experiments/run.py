"""Trains one run of a study from the command line.

  python experiments/run.py --model=lenet --activation=sigmoid
  python experiments/run.py --epochs=1 --workdir=/tmp/lenet

Every flag is a field of mnistjax.config.Config; flags not given keep its
defaults (SPEC S0's protocol). Invalid values and unreadable data end the run
with one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mnistjax import cli, train

flags.DEFINE_string("workdir", None, "write config.json and metrics.jsonl here")
cli.define_config_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])}; settings are given as --name=value")
  with cli.user_errors():
    config = cli.config_from_flags()
    train.train_and_evaluate(config, workdir=flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
  sys.exit(0)
