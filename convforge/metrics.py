"""Classification metrics on NumPy arrays: accuracy, top-k accuracy, confusion matrix,
per-class precision / recall / F1.

Labels are integer class indices ``0 .. num_classes - 1``; scores are ``[N, C]`` logits (or
probabilities: only their order matters). Every function checks its inputs and raises a
:class:`~convforge.errors.ConvforgeError` subclass naming the argument, what was expected and
what was given.

>>> from convforge import metrics
>>> metrics.accuracy(net(x_test), y_test)            # logits -> argmax -> fraction correct
0.981
>>> metrics.confusion_matrix(y_test, preds, num_classes=10)[3, 5]   # threes taken for fives
4
"""

from __future__ import annotations

import dataclasses

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError

__all__ = ["ClassReport", "accuracy", "confusion_matrix", "precision_recall", "top_k_accuracy"]


def accuracy(logits_or_pred: np.ndarray, y: np.ndarray) -> float:
    """The fraction of samples whose prediction equals the label ``y`` (``[N]`` integers).

    ``logits_or_pred`` is ``[N, C]`` scores (the prediction is the argmax, the first one on a
    tie, as ``torch.argmax``) or ``[N]`` predicted labels.
    """
    y = _labels(y, "accuracy", "y")
    pred = _predictions(logits_or_pred, "accuracy", len(y))
    if len(y) == 0:
        raise ShapeError("accuracy: expected at least one sample, given 0")
    return float(np.mean(pred == y))


def top_k_accuracy(logits: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """The fraction of samples whose label is among the ``k`` highest of ``logits`` (``[N, C]``).

    Ties are ranked as a stable descending sort ranks them (lower class index first), so
    ``k=1`` agrees with :func:`accuracy` on the argmax.
    """
    y = _labels(y, "top_k_accuracy", "y")
    scores = _scores(logits, "top_k_accuracy", len(y))
    classes = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= classes:
        raise AttributeValueError(f"top_k_accuracy: expected k an int in [1, {classes}], given {k!r}")
    if len(y) == 0:
        raise ShapeError("top_k_accuracy: expected at least one sample, given 0")
    _check_range(y, classes, "top_k_accuracy", "y")
    target = scores[np.arange(len(y)), y][:, None]
    before = np.arange(classes)[None, :] < y[:, None]
    rank = np.sum(scores > target, axis=1) + np.sum((scores == target) & before, axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts: row = true label, column = predicted label.

    ``num_classes`` defaults to one more than the largest label in either array.
    """
    y_true, y_pred, num_classes = _label_pair(y_true, y_pred, num_classes, "confusion_matrix")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


@dataclasses.dataclass(frozen=True)
class ClassReport:
    """Per-class ``precision``, ``recall``, ``f1`` (float64 ``[C]``) and ``support`` (int64 ``[C]``,
    the number of true samples of each class). ``str()`` is a table."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    def __str__(self) -> str:
        lines = [f"{'class':>5} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
        for c, (p, r, f, s) in enumerate(zip(self.precision, self.recall, self.f1, self.support)):
            lines.append(f"{c:>5} {p:>9.3f} {r:>7.3f} {f:>6.3f} {s:>8}")
        return "\n".join(lines)


def precision_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> ClassReport:
    """Per-class precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)``, their harmonic mean F1,
    and support; a ratio with a zero denominator is 0.0 (as scikit-learn's ``zero_division=0``)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return ClassReport(precision, recall, f1, support)


# -- checks -------------------------------------------------------------------------------
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _array(value: object, who: str, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise DTypeError(f"{who}: expected {name} as a numeric array, given {type(value).__name__}")
    return arr


def _labels(value: object, who: str, name: str) -> np.ndarray:
    arr = _array(value, who, name)
    if arr.ndim != 1:
        raise ShapeError(f"{who}: expected {name} as [N] class labels, given shape {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{who}: expected {name} to hold integer class labels, given dtype {arr.dtype}")
    if len(arr) and arr.min() < 0:
        raise AttributeValueError(f"{who}: expected {name} >= 0, given the label {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


def _scores(value: object, who: str, n: int) -> np.ndarray:
    arr = _array(value, who, "logits")
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise ShapeError(f"{who}: expected logits of shape [{n}, C] (C >= 1), given {list(arr.shape)}")
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{who}: expected numeric logits, given dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise AttributeValueError(f"{who}: logits contain NaN")
    return arr


def _predictions(value: object, who: str, n: int) -> np.ndarray:
    arr = _array(value, who, "logits_or_pred")
    if arr.ndim == 2:
        return _scores(arr, who, n).argmax(axis=1)
    pred = _labels(arr, who, "logits_or_pred")
    if len(pred) != n:
        raise ShapeError(f"{who}: expected {n} predictions (one per label), given {len(pred)}")
    return pred


def _check_range(labels: np.ndarray, classes: int, who: str, name: str) -> None:
    if len(labels) and labels.max() >= classes:
        raise AttributeValueError(
            f"{who}: expected {name} in [0, {classes}), given the label {int(labels.max())}"
        )


def _label_pair(
    y_true: object, y_pred: object, num_classes: int | None, who: str
) -> tuple[np.ndarray, np.ndarray, int]:
    y_true = _labels(y_true, who, "y_true")
    y_pred = _labels(y_pred, who, "y_pred")
    if len(y_true) != len(y_pred):
        raise ShapeError(
            f"{who}: expected y_true and y_pred of the same length, given {len(y_true)} and {len(y_pred)}"
        )
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise AttributeValueError(f"{who}: expected num_classes an int >= 1, given {num_classes!r}")
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        _check_range(labels, int(num_classes), who, name)
    return y_true, y_pred, int(num_classes)
