import math

import numpy as np
import pytest
import torch

from enet_serve.training.metrics import ConfusionMatrix, top1_accuracy


def test_iou_on_a_hand_made_matrix():
    # truth:      0 0 1 1 2 2
    # prediction: 0 1 1 1 2 0
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 1, 2, 0]), np.array([0, 0, 1, 1, 2, 2]))
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.mean_iou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(cm.class_accuracy(), [1 / 2, 1.0, 1 / 2])
    assert cm.global_accuracy() == pytest.approx(4 / 6)


def test_confusions_say_where_each_class_went():
    # truth:      0 0 0 0 1 1 2 2
    # prediction: 0 1 1 2 1 1 1 1   (class 2 never predicted right; class 1 also predicted for 2)
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1, 2, 1, 1, 1, 1]), np.array([0, 0, 0, 0, 1, 1, 2, 2]))
    out = cm.confusions(["a", "b", "c", "d"], top=1)
    assert set(out) == {"a", "b", "c"}  # "d" is never true: nothing to say
    assert out["a"] == {"recall": 25.0, "precision": 100.0, "mistaken_for": {"b": 50.0}}  # top 1 of b 50, c 25
    assert out["b"] == {"recall": 100.0, "precision": 33.33, "mistaken_for": {}}
    assert out["c"] == {"recall": 0.0, "precision": 0.0, "mistaken_for": {"b": 100.0}}
    assert cm.confusions(top=3)["0"]["mistaken_for"] == {"1": 50.0, "2": 25.0}


def test_void_pixels_count_nowhere():
    cm = ConfusionMatrix(2, ignore_index=11)
    cm.update(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 11], [1, 11]]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    assert cm.mean_iou() == 1.0


def test_classes_absent_from_truth_and_prediction_are_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update([0, 0, 1], [0, 0, 1])
    assert math.isnan(cm.iou()[2])
    assert cm.mean_iou() == 1.0
    assert cm.summary(["a", "b", "c"])["per_class_iou"] == {"a": 100.0, "b": 100.0, "c": None}


def test_a_class_predicted_but_never_true_scores_zero():
    cm = ConfusionMatrix(2)
    cm.update([1, 1], [0, 0])
    assert cm.iou().tolist() == [0.0, 0.0]


def test_accumulates_over_updates_and_rejects_mismatched_shapes():
    cm = ConfusionMatrix(2)
    cm.update([0], [0])
    cm.update([1], [1])
    assert cm.matrix.sum() == 2
    with pytest.raises(ValueError, match="elements"):
        cm.update([0, 1], [0])


def test_top1_from_logits_and_from_indices():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)
    assert top1_accuracy(np.array([1, 1]), np.array([1, 0])) == 0.5
