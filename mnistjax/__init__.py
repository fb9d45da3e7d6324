"""mnistjax: the studies of four MNIST / Fashion-MNIST notebooks as reproducible JAX/Flax runs.

In a notebook:

  import mnistjax
  result = mnistjax.train(mnistjax.Config(epochs=1))            # a Result
  result.history[-1]                                            # the last epoch's numbers
  sweep = mnistjax.train(mnistjax.Config(), sweep={"dropout": (0.25, 0.5)})
  again = mnistjax.load("runs/lenet")                           # a run's workdir
  rows = mnistjax.run_study("s0_dropout", {"epochs": 1})        # a study of the notebooks
"""

from mnistjax.config import Config
from mnistjax.driver import train
from mnistjax.results import Result, load
from mnistjax.studies import run_study

__all__ = ["Config", "Result", "load", "run_study", "train"]
__version__ = "0.1.0"
