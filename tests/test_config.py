"""The Python API checks as strictly as the flags: Config's types and names, train's and load's
arguments, sweep axes; each refusal is one line naming the fix."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import mnistjax
from conftest import quiet, synthetic
from mnistjax import config as config_lib
from mnistjax import driver
from mnistjax.errors import ConfigError, MnistjaxError


def one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message


@pytest.mark.parametrize("changes,fragments", [
    # Truthy strings: these trained as True while config.json recorded "false".
    ({"nesterov": "false"}, ["nesterov='false'", "must be a bool (True or False), not str"]),
    ({"batchnorm": "false"}, ["batchnorm='false'", "a bool (True or False) or None"]),
    ({"zero_grad": "false"}, ["zero_grad='false'", "a bool"]),
    ({"eval_train": 1}, ["eval_train=1", "a bool"]),
    ({"lr": "0.1"}, ["lr='0.1'", "a real number, not str"]),
    ({"epochs": 2.5}, ["epochs=2.5", "an int, not float"]),
    ({"batch_size": 64.0}, ["batch_size=64.0", "an int"]),
    ({"seed": 1.5}, ["seed=1.5", "an int"]),
    ({"seed": True}, ["seed=True", "an int, not bool"]),
    ({"momentum": False}, ["momentum=False", "a real number, not bool"]),
    ({"dropout": "0.5"}, ["dropout='0.5'", "a real number or None"]),
    ({"dataset": None}, ["dataset=None", "a str, not NoneType"]),
    ({"activation": 1}, ["activation=1", "a str or None"]),
])
def test_every_field_is_checked_for_its_type(changes, fragments):
  with pytest.raises(ConfigError) as error:
    config_lib.Config(**changes).validate()
  one_line(error, *fragments)
  with pytest.raises(ConfigError):  # before anything trains
    mnistjax.train(config_lib.Config(**changes), dataset=synthetic(), **quiet())


def test_values_of_the_right_type_pass():
  config_lib.Config(lr=1, dropout=None, batchnorm=None, momentum=0, warmup_epochs=1,
                    eps=np.float64(1e-8)).validate()
  config_lib.Config(dropout=0.5, batchnorm=True, activation="relu").validate()


def test_an_unknown_setting_is_one_line_naming_the_settings():
  with pytest.raises(ConfigError) as error:
    config_lib.Config(bogus=1)
  one_line(error, "no setting 'bogus'", "lr", "batch_size", "seed")
  with pytest.raises(ConfigError, match="no setting 'learning_rate'"):
    config_lib.Config().replace(learning_rate=0.1)


@pytest.mark.parametrize("sweep,fragments", [
    # The command line refused these; the API trained identical numbers under other labels.
    ({"activation": ("relu", "sigmoid")}, ["'activation' can't be swept",
                                           "dropout, lr, weight_decay, momentum, l2, seed"]),
    ({"model": ("lenet", "cnn")}, ["'model' can't be swept"]),
    ({"epochs": (1, 2)}, ["'epochs' can't be swept"]),
    ({"batch_size": (32, 64)}, ["'batch_size' can't be swept"]),
    ({"optimizer": ("sgd", "adam")}, ["'optimizer' can't be swept"]),
    ({"lr": ()}, ["lr=()", "at least one value"]),
    ({"dropout": 0.5}, ["dropout=0.5", "a sequence of values"]),
    ({"dropout": "0.5"}, ["dropout='0.5'", "a sequence of values"]),
    ({"lr": ("0.1",)}, ["lr='0.1'", "each value of lr must be a real number, not str"]),
    ({"seed": (1.5, 2)}, ["seed=1.5", "an int, not float"]),
    ({"seed": (True,)}, ["seed=True", "an int, not bool"]),
    ([("lr", (0.1,))], ["give a dict"]),
])
def test_sweeps_the_command_line_refuses_are_refused_by_the_api(sweep, fragments):
  with pytest.raises(ConfigError) as error:
    driver.train(config_lib.Config(epochs=1), sweep, dataset=synthetic(), **quiet())
  one_line(error, *fragments)


def test_the_flag_parser_and_the_api_check_sweeps_at_one_point():
  assert config_lib.parse_sweep(["lr=0.1,0.2", "seed=1,2"]) == {"lr": (0.1, 0.2), "seed": (1, 2)}
  with pytest.raises(ConfigError, match="'activation' can't be swept"):
    config_lib.parse_sweep(["activation=relu,tanh"])
  assert config_lib.check_sweep({"dropout": [0.25, 0.5]}) == {"dropout": (0.25, 0.5)}
  assert config_lib.check_sweep({"lr": (1, 0.5)}) == {"lr": (1, 0.5)}  # ints are real numbers


@pytest.mark.parametrize("args,kwargs,fragments", [
    (("lenet",), {}, ["train(config='lenet')", "give a mnistjax.Config"]),
    ((config_lib.Config(),), {"workdir": 123}, ["train(workdir=123)", "a folder's path"]),
    ((config_lib.Config(),), {"dataset": "mnist"}, ["train(dataset='mnist')",
                                                    "Config(dataset='fashion_mnist')"]),
    ((config_lib.Config(),), {"resume": "yes"}, ["train(resume='yes')", "True or False"]),
])
def test_train_names_an_argument_of_the_wrong_type(args, kwargs, fragments):
  with pytest.raises(ConfigError) as error:
    mnistjax.train(*args, **kwargs, **quiet())
  one_line(error, *fragments)


def test_load_of_a_file_or_of_corrupt_records_is_one_line(tmp_path):
  with pytest.raises(MnistjaxError) as error:
    mnistjax.load(123)
  one_line(error, "load(123)")
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(MnistjaxError) as error:
    mnistjax.load(a_file)
  one_line(error, "is a file, not a run's folder")

  run = tmp_path / "run"
  driver.train(config_lib.Config(epochs=1), None, str(run), synthetic(), **quiet())
  good_config = (run / "config.json").read_text()
  (run / "summary.json").write_text('{"members": [')
  with pytest.raises(MnistjaxError) as error:
    mnistjax.load(run)
  one_line(error, "summary.json can't be read", "--resume")
  (run / "summary.json").unlink()
  for corrupt in ('{"config": ', "[1, 2]", '{"config": {"lr": "fast"}}',
                  json.dumps({**json.loads(good_config), "config": {"bogus": 1}})):
    (run / "config.json").write_text(corrupt)
    with pytest.raises(MnistjaxError) as error:
      mnistjax.load(run)
    one_line(error, "config.json")
  (run / "config.json").write_text(good_config)
  assert mnistjax.load(pathlib.Path(run)).history[-1]["epoch"] == 1
