"""mnistjax: the studies of four MNIST / Fashion-MNIST notebooks as reproducible JAX/Flax runs.

In a notebook:

  import mnistjax
  result = mnistjax.train(mnistjax.Config(epochs=1))            # a Result
  result.history[-1]                                            # the last epoch's numbers
  sweep = mnistjax.train(mnistjax.Config(), sweep={"dropout": (0.25, 0.5)})
  again = mnistjax.load("runs/lenet")                           # a run's workdir
  rows = mnistjax.run_study("s0_dropout", {"epochs": 1})        # a study of the notebooks

Your own parts (README, "Your own model"):

  data = mnistjax.from_arrays(x_train, y_train, x_test, y_test)  # any size, channels, classes
  mnistjax.train(mnistjax.Config(), dataset=data, model=MyFlaxModule(),
                 optimizer=lambda learning_rate: optax.adamw(learning_rate),
                 writers=[mnistjax.TensorBoardWriter("runs/tb")])
"""

from mnistjax.config import Config
from mnistjax.data import from_arrays
from mnistjax.driver import train
from mnistjax.results import Result, load
from mnistjax.studies import run_study
from mnistjax.writers import TensorBoardWriter

__all__ = ["Config", "Result", "TensorBoardWriter", "from_arrays", "load", "run_study", "train"]
__version__ = "0.1.0"
