"""Trains a study of the notebooks (docs/studies.md), or any configuration, from the command line.

  python experiments/run.py --model=lenet --activation=sigmoid
  python experiments/run.py --study=s1_fashion_cnn3 --epochs=3 --workdir=runs/cnn3
  python experiments/run.py --list

The program lives in mnistjax/programs.py (`run_main`; --help lists its flags); an installed
package runs it as `mnistjax run`.
"""

from mnistjax import programs

if __name__ == "__main__":
  programs.start("run", "python experiments/run.py")
