"""The PyTorch code a user would run instead: the notebooks' networks in eager mode.

Imported only by benchmarks/run.py (torch is the `bench` extra, never a dependency
of the library). The networks are those of mnistjax.models, written as the
notebooks wrote them (NCHW, F.max_pool2d, log_softmax + nll_loss); the data is
held in memory as uint8 tensors and normalised per batch, which is faster than the
notebooks' DataLoader with per-image transforms, so the baseline is a generous one.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
  """S0: conv 20@5, pool, conv 50@5, pool, dense 500, dense 10."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 20, 5, 1)
    self.conv2 = nn.Conv2d(20, 50, 5, 1)
    self.fc1 = nn.Linear(4 * 4 * 50, 500)
    self.fc2 = nn.Linear(500, 10)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
    x = F.relu(self.fc1(x.flatten(1)))
    return F.log_softmax(self.fc2(x), dim=1)


class CNN3(nn.Module):
  """S1's CNN3: four conv 5x5 (pad 2) + BatchNorm + relu blocks, max-pool 2 after the third,
  max-pool 3 stride 1 after the fourth, dropout 0.05, dense 10."""

  def __init__(self):
    super().__init__()
    widths = (1, 16, 32, 64, 128)
    self.convs = nn.ModuleList(nn.Conv2d(i, o, 5, padding=2) for i, o in zip(widths, widths[1:]))
    self.bns = nn.ModuleList(nn.BatchNorm2d(o) for o in widths[1:])
    self.dropout = nn.Dropout(0.05)
    self.fc = nn.Linear(12 * 12 * 128, 10)

  def forward(self, x):
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      x = F.relu(bn(conv(x)))
      if i == 2:
        x = F.max_pool2d(x, 2, 2)
      elif i == 3:
        x = F.max_pool2d(x, 3, 1)
    return F.log_softmax(self.fc(self.dropout(x.flatten(1))), dim=1)


class MLPDeep(nn.Module):
  """S4: 784-500-250-100-10, relu."""

  def __init__(self):
    super().__init__()
    self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 250),
                                nn.ReLU(), nn.Linear(250, 100), nn.ReLU(), nn.Linear(100, 10))

  def forward(self, x):
    return F.log_softmax(self.layers(x), dim=1)


NETS = {"lenet": LeNet, "cnn3": CNN3, "mlp_deep": MLPDeep}


class Runner:
  """One network with the notebook's SGD, its data in memory as uint8 tensors."""

  def __init__(self, name: str, lr: float, momentum: float, weight_decay: float,
               norm: tuple[float, float], channels_last: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    self.model = NETS[name]()
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=self.memory_format)
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                     weight_decay=weight_decay)
    self.mean, self.std = norm

  def inputs(self, images_u8: torch.Tensor) -> torch.Tensor:
    x = (images_u8.float().div_(255.0).sub_(self.mean).div_(self.std)).unsqueeze(1)
    return x.contiguous(memory_format=self.memory_format)

  def step(self, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    self.model.train()
    self.optimizer.zero_grad()
    loss = F.nll_loss(self.model(self.inputs(images_u8)), labels)
    loss.backward()
    self.optimizer.step()
    return loss

  @torch.no_grad()
  def evaluate(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000):
    self.model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
      out = self.model(self.inputs(images_u8[start:start + batch_size]))
      target = labels[start:start + batch_size]
      loss += F.nll_loss(out, target, reduction="sum").item()
      correct += (out.argmax(1) == target).sum().item()
    return loss / len(labels), 100.0 * correct / len(labels)

  def epoch(self, train_images, train_labels, batch_size: int, generator) -> None:
    order = torch.randperm(len(train_labels), generator=generator)
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      self.step(train_images[idx], train_labels[idx])


def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
  return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def time_steps(runner: Runner, images, labels, steps: int, repeats: int = 3) -> dict:
  """First-step time, then the median seconds per step over `repeats` runs of `steps`."""
  start = time.perf_counter()
  runner.step(images, labels)
  first = time.perf_counter() - start
  for _ in range(3):
    runner.step(images, labels)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      runner.step(images, labels)
    times.append((time.perf_counter() - start) / steps)
  return {"first_step_seconds": first, "seconds_per_step": float(np.median(times))}
