"""mnistjax: the studies of four MNIST / Fashion-MNIST notebooks as reproducible JAX/Flax runs.

In a notebook:

  import mnistjax
  result = mnistjax.train(mnistjax.Config(epochs=1))            # a Result
  result.history[-1]                                            # the last epoch's numbers
  sweep = mnistjax.train(mnistjax.Config(), sweep={"dropout": (0.25, 0.5)})
  again = mnistjax.load("runs/lenet")                           # a run's workdir
"""

from mnistjax.config import Config
from mnistjax.driver import train
from mnistjax.results import Result, load

__all__ = ["Config", "Result", "load", "train"]
__version__ = "0.1.0"
