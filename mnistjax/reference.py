"""What the four notebooks reported, as data, beside each study of `mnistjax.studies`.

`NOTEBOOK[study][variant]` holds the numbers a notebook printed for one variant (the
variant names are `studies.variant_name`'s). Accuracies are in %; where a notebook printed
counts (S0, S1) the value is correct / N, more exact than its rounded printout. Fields:

  test_accuracy, train_accuracy: after the last epoch (train: the full training set).
  test_accuracy_by_epoch, train_accuracy_by_epoch: after each epoch (S0; S4's Adam run).
  untrained_test_accuracy: before training (S1).
  train_loss_epoch1, train_loss_epoch1_sem: S2's training loss near the end of its one pass
    (the mean of the last block of per-step losses the notebook's text shows, and that mean's
    standard error: the block is a sample of single-batch losses).
  f1_by_class: S4's per-class F1 on the test set (scikit-learn's report, two decimals).

`STUDY_NOTES` says where a study's protocol knowingly differs from the notebook's;
`EXPECTED` names the variants whose difference is known in advance, and why; `QUIRKS` are
the notebook's own quirks as config changes, run by experiments/reproduce.py to diagnose a
variant that differs. docs/studies.md gives the notebooks' protocols and sources.
"""

from __future__ import annotations

from typing import Any

_S0_NOTE = ("PyTorch LeNet; every number is an evaluation of the whole test (10,000) and "
            "train (60,000) set after each epoch.")

NOTEBOOK: dict[str, dict[str, dict[str, Any]]] = {
    "s0_activation": {
        "activation=relu": {
            "test_accuracy": 98.67, "train_accuracy": 98.8583,
            "test_accuracy_by_epoch": [96.70, 98.35, 98.51, 98.79, 98.67],
            "train_accuracy_by_epoch": [96.6133, 98.0733, 98.4017, 98.915, 98.8583]},
        "activation=sigmoid": {
            "test_accuracy": 85.29, "train_accuracy": 84.975,
            "test_accuracy_by_epoch": [10.28, 9.89, 56.15, 79.74, 85.29],
            "train_accuracy_by_epoch": [10.4417, 9.9567, 55.4267, 79.3067, 84.975]},
    },
    "s0_dropout": {
        "dropout=0.25": {
            "test_accuracy": 99.14, "train_accuracy": 99.0883,
            "test_accuracy_by_epoch": [97.64, 98.17, 98.75, 98.81, 99.14],
            "train_accuracy_by_epoch": [97.3233, 98.17, 98.6, 98.785, 99.0883]},
        "dropout=0.5": {
            "test_accuracy": 98.95, "train_accuracy": 99.0467,
            "test_accuracy_by_epoch": [97.52, 98.37, 98.72, 98.88, 98.95],
            "train_accuracy_by_epoch": [97.4517, 98.2967, 98.6, 98.7967, 99.0467]},
        "dropout=0.75": {
            "test_accuracy": 98.69, "train_accuracy": 98.5033,
            "test_accuracy_by_epoch": [96.77, 97.73, 98.24, 98.50, 98.69],
            "train_accuracy_by_epoch": [96.4583, 97.47, 98.04, 98.355, 98.5033]},
        "dropout=1.0": {
            "test_accuracy": 11.28, "train_accuracy": 11.1017,
            "test_accuracy_by_epoch": [12.34, 13.63, 12.80, 13.28, 11.28],
            "train_accuracy_by_epoch": [12.215, 13.4183, 12.7117, 13.17, 11.1017]},
    },
    "s0_batchnorm": {
        "dropout=0.25": {
            "test_accuracy": 99.15, "train_accuracy": 99.33,
            "test_accuracy_by_epoch": [98.09, 98.90, 98.94, 98.98, 99.15],
            "train_accuracy_by_epoch": [98.165, 98.885, 99.0717, 99.1533, 99.33]},
        "dropout=0.0": {
            "test_accuracy": 99.12, "train_accuracy": 99.6767,
            "test_accuracy_by_epoch": [98.59, 98.97, 98.99, 99.17, 99.12],
            "train_accuracy_by_epoch": [98.6917, 99.2733, 99.4683, 99.6217, 99.6767]},
    },
    "s0_init": {
        "batchnorm=True,init=xavier_normal": {
            "test_accuracy": 98.91, "train_accuracy": 99.4433,
            "test_accuracy_by_epoch": [98.54, 98.81, 98.98, 99.01, 98.91],
            "train_accuracy_by_epoch": [98.605, 99.1133, 99.37, 99.465, 99.4433]},
        "batchnorm=True,init=kaiming_normal": {
            "test_accuracy": 98.97, "train_accuracy": 99.36,
            "test_accuracy_by_epoch": [97.83, 98.35, 98.65, 98.87, 98.97],
            "train_accuracy_by_epoch": [97.8, 98.6083, 98.9383, 99.1967, 99.36]},
        "batchnorm=False,init=xavier_normal": {
            "test_accuracy": 98.17, "train_accuracy": 98.7483,
            "test_accuracy_by_epoch": [96.07, 98.15, 98.45, 98.84, 98.17],
            "train_accuracy_by_epoch": [95.915, 98.1983, 98.735, 98.975, 98.7483]},
    },
    "s1_fashion_cnn3": {
        "base": {"test_accuracy": 87.11, "test_accuracy_by_epoch": [87.11],
                 "untrained_test_accuracy": 10.96},
    },
    # The notebook answered its learning-rate / weight-decay questions in prose and printed no
    # grid result; its choice (lr 0.001, weight decay 0.04) is marked on the heatmap.
    "s1_lr_wd": {},
    "s2_rmsprop": {"base": {"train_loss_epoch1": 0.4476, "train_loss_epoch1_sem": 0.0233}},
    "s2_dropout": {"base": {"train_loss_epoch1": 1.5505, "train_loss_epoch1_sem": 0.0151}},
    "s2_prelu": {"base": {"train_loss_epoch1": 1.2638, "train_loss_epoch1_sem": 0.0193}},
    "s4_activation": {
        "activation=sigmoid": {
            "test_accuracy": 79.66, "train_accuracy": 79.0167,
            "f1_by_class": [0.92, 0.95, 0.74, 0.79, 0.74, 0.66, 0.87, 0.85, 0.70, 0.69]},
        "activation=tanh": {
            "test_accuracy": 95.47, "train_accuracy": 95.925,
            "f1_by_class": [0.97, 0.98, 0.95, 0.95, 0.95, 0.95, 0.96, 0.95, 0.94, 0.94]},
        "activation=relu": {
            "test_accuracy": 96.94, "train_accuracy": 97.8867,
            "f1_by_class": [0.98, 0.98, 0.97, 0.97, 0.97, 0.96, 0.97, 0.97, 0.96, 0.96]},
    },
    "s4_l2": {
        # l2=0 is not a run of its own in the notebook: it compares with the relu run above.
        "l2=0.0": {
            "test_accuracy": 96.94, "train_accuracy": 97.8867,
            "f1_by_class": [0.98, 0.98, 0.97, 0.97, 0.97, 0.96, 0.97, 0.97, 0.96, 0.96]},
        "l2=0.8": {
            "test_accuracy": 94.28, "train_accuracy": 94.2717,
            "f1_by_class": [0.96, 0.98, 0.94, 0.94, 0.94, 0.93, 0.95, 0.94, 0.92, 0.92]},
    },
    "s4_adam": {
        # Printed with one decimal: the true value lies within +-0.05.
        "base": {"test_accuracy": 97.4,
                 "test_accuracy_by_epoch": [95.2, 92.5, 95.5, 95.6, 96.0, 95.6, 95.7, 96.6, 97.3,
                                            96.3, 97.0, 96.4, 97.0, 97.2, 97.4]},
    },
}

STUDY_NOTES: dict[str, str] = {
    "s0_activation": _S0_NOTE,
    "s0_dropout": _S0_NOTE + " With dropout 1.0 every hidden unit is dropped in training, so "
                  "the evaluated network is the random initial one with a trained output "
                  "bias: any accuracy near chance is the same result.",
    "s0_batchnorm": _S0_NOTE + " BatchNorm after each hidden activation.",
    "s0_init": _S0_NOTE + " The initialiser sets the weights of all four layers; biases keep "
               "PyTorch's default.",
    "s1_fashion_cnn3": "The notebook normalised Fashion-MNIST with MNIST's mean and std "
                       "(0.1307, 0.3081); the study uses Fashion-MNIST's own (0.2860, 0.3530), "
                       "as its text intended. The untrained row is the evaluation before training.",
    "s1_lr_wd": "No number in the notebook: it answered the question in prose and chose lr "
                "0.001 with weight decay 0.04. Ours is the grid it asked about.",
    "s2_rmsprop": "The notebook ran one pass over its loader (its 100 epochs are a TODO) and "
                  "printed every step's single-batch loss, of which its text shows excerpts; "
                  "its number is the mean of the last excerpt, ours the mean training loss "
                  "over the last third of epoch 1 (steps 401-600). Its loop never zeroes "
                  "the gradients, so its RMSprop sees their running sum; ours the gradient.",
    "s2_dropout": "As s2_rmsprop; dropout keeps 0.8 of the inputs and 0.7 of the hidden units, "
                  "and the loss is measured with dropout on.",
    "s2_prelu": "As s2_dropout, with one PReLU slope shared by the layers, from -0.1.",
    "s4_activation": "The notebook's hand-written backpropagation multiplied by the derivative "
                     "taken at the activation's output instead of its input. That is exact "
                     "for relu (1 where the output is > 0) and wrong for sigmoid and tanh; ours "
                     "is correct. It printed binary cross-entropy but its gradients are those "
                     "of softmax cross-entropy, which we train.",
    "s4_l2": "relu, so the notebook's derivative bug has no effect; the penalty is "
             "lambda / (2 m) * sum W^2 over the weights.",
    "s4_adam": "PyTorch's Adam in the notebook; its loader was not shuffled and kept the last "
               "partial batch, ours is shuffled and drops it (as S4's other runs).",
}

# variant -> why ours differs by design.
EXPECTED: dict[str, dict[str, str]] = {
    "s4_activation": {
        "activation=sigmoid": "the notebook's backpropagation took sigmoid's derivative at "
                              "its output (a(1 - a) of a = sigmoid(z) becomes "
                              "s(a)(1 - s(a))), which slowed its training; ours is correct",
        "activation=tanh": "the notebook's backpropagation took tanh's derivative at its "
                           "output (1 - tanh(a)^2 with a = tanh(z)); ours is correct",
    },
}

# The notebook's own protocol where the study knowingly departs from it: run over the same
# seeds when a variant differs, to show whether that departure explains the difference.
QUIRKS: dict[str, dict[str, Any]] = {
    "s1_fashion_cnn3": {"normalization": "mnist"},
    "s2_rmsprop": {"zero_grad": False},
    "s2_dropout": {"zero_grad": False},
    "s2_prelu": {"zero_grad": False},
}

# Changes to a study's protocol for the comparison: S2's notebook ran one epoch.
PROTOCOL: dict[str, dict[str, Any]] = {
    "s2_rmsprop": {"epochs": 1},
    "s2_dropout": {"epochs": 1},
    "s2_prelu": {"epochs": 1},
}
