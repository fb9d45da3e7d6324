"""Classification metrics from predictions: confusion matrix and per-class report."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int = 10) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
  return counts


def classification_report(confusion: np.ndarray, class_names) -> dict:
  """Per-class precision, recall, F1 and support, with macro and weighted averages."""
  tp = np.diag(confusion).astype(np.float64)
  support = confusion.sum(1)
  predicted = confusion.sum(0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  rows = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
          for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
  weights = support / max(support.sum(), 1)
  return {
      "classes": rows,
      "accuracy": float(tp.sum() / max(confusion.sum(), 1)),
      "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                    "f1": float(f1.mean()), "support": int(support.sum())},
      "weighted_avg": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                       "f1": float(f1 @ weights), "support": int(support.sum())},
  }


def format_report(report: dict) -> str:
  """The report as a text table (as scikit-learn prints it)."""
  width = max(12, *(len(n) for n in report["classes"]))
  lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
  for name, row in report["classes"].items():
    lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} "
                 f"{row['f1']:9.4f} {row['support']:9d}")
  lines.append("")
  total = report["macro_avg"]["support"]
  lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:9.4f} {total:9d}")
  for key in ("macro_avg", "weighted_avg"):
    row = report[key]
    lines.append(f"{key.replace('_', ' '):>{width}} {row['precision']:9.4f} "
                 f"{row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}")
  return "\n".join(lines) + "\n"
