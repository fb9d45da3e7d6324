"""Reproduces every study of the four notebooks over seeds and compares with their numbers.

  python experiments/reproduce.py                      # every study, seeds 1,2,3
  python experiments/reproduce.py --quick --out=/tmp/quick   # a check of the pipeline

The program lives in mnistjax/programs.py (`reproduce_main`; --help lists its flags); an
installed package runs it as `mnistjax reproduce`.
"""

from mnistjax import programs

if __name__ == "__main__":
  programs.start("reproduce", "python experiments/reproduce.py")
