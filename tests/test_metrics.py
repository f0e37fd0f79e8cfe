"""cf.metrics against values worked out by hand, and clear errors on bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

import convforge as cf
from convforge import metrics
from convforge.errors import ConvforgeError

LOGITS = np.array(
    [
        [0.1, 2.0, 0.3],  # pred 1, second 2
        [1.0, 1.0, 0.0],  # tie: pred 0 (first), class 1 ranks second
        [0.0, 0.2, 0.9],  # pred 2, second 1
        [3.0, 0.0, 1.0],  # pred 0, second 2
    ]
)
Y = np.array([1, 1, 0, 2])


def test_accuracy_from_logits_and_from_predictions():
    assert metrics.accuracy(LOGITS, Y) == 0.25  # only sample 0
    assert metrics.accuracy(np.array([1, 1, 0, 0]), Y) == 0.75
    assert cf.metrics is metrics


def test_top_k_accuracy_by_hand():
    assert metrics.top_k_accuracy(LOGITS, Y, k=1) == metrics.accuracy(LOGITS, Y) == 0.25
    # ranks of the true class: 0, 1 (tie broken by index), 2, 1
    assert metrics.top_k_accuracy(LOGITS, Y, k=2) == 0.75
    assert metrics.top_k_accuracy(LOGITS, Y, k=3) == 1.0


def test_confusion_matrix_and_precision_recall_by_hand():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 1])
    matrix = metrics.confusion_matrix(y_true, y_pred, num_classes=4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[:3, :3] = [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    np.testing.assert_array_equal(matrix, expected)
    assert metrics.confusion_matrix(y_true, y_pred).shape == (3, 3)  # inferred from the labels

    report = metrics.precision_recall(y_true, y_pred, num_classes=4)
    # class 0: tp 1, predicted 2, true 2; class 1: tp 2, predicted 4, true 3; class 2: none right
    np.testing.assert_allclose(report.precision, [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(report.recall, [0.5, 2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(report.f1, [0.5, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 0.0, 0.0])
    np.testing.assert_array_equal(report.support, [2, 3, 1, 0])
    assert str(report).splitlines()[0].split() == ["class", "precision", "recall", "f1", "support"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.accuracy(LOGITS, Y[:3]), "logits of shape [3, C]"),
        (lambda: metrics.accuracy(LOGITS, Y.astype(float)), "integer class labels"),
        (lambda: metrics.accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)), "at least one sample"),
        (lambda: metrics.top_k_accuracy(LOGITS, Y, k=4), "k an int in [1, 3]"),
        (lambda: metrics.top_k_accuracy(LOGITS, np.array([1, 1, 0, 3]), k=1), "y in [0, 3)"),
        (lambda: metrics.top_k_accuracy(np.full((4, 3), np.nan), Y, k=1), "NaN"),
        (lambda: metrics.confusion_matrix(Y, Y[:2]), "same length"),
        (lambda: metrics.confusion_matrix(Y, Y, num_classes=2), "y_true in [0, 2)"),
        (lambda: metrics.confusion_matrix(np.array([-1]), np.array([0])), "y_true >= 0"),
        (lambda: metrics.precision_recall(Y, Y, num_classes=0), "num_classes an int >= 1"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ConvforgeError, match=re.escape(message)):
        call()
