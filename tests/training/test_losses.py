import pytest
import torch
import torch.nn.functional as F

from enet_serve.training.losses import lovasz_softmax


def _hard_logits(prediction: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(prediction, classes).permute(0, 3, 1, 2).float() * 100.0


def test_lovasz_softmax_is_one_minus_miou_on_hard_predictions():
    # On 0/1 predictions the Lovász extension is exact: the loss is 1 - mean IoU over the classes present.
    torch.manual_seed(0)
    targets = torch.randint(0, 4, (2, 16, 16))
    prediction = torch.randint(0, 4, (2, 16, 16))
    ious = [((targets == c) & (prediction == c)).sum() / ((targets == c) | (prediction == c)).sum() for c in range(4)]
    loss = lovasz_softmax(_hard_logits(prediction, 4), targets)
    assert loss.item() == pytest.approx(1.0 - torch.stack(ious).mean().item(), abs=1e-5)
    assert lovasz_softmax(_hard_logits(targets, 4), targets).item() == pytest.approx(0.0, abs=1e-6)


def test_lovasz_softmax_leaves_out_void_and_gives_a_thin_class_its_share():
    targets = torch.zeros(1, 32, 32, dtype=torch.long)
    targets[..., 10] = 1  # a one-pixel-wide pole
    targets[..., :2] = 11  # void
    prediction = torch.zeros_like(targets)  # the pole missed entirely, void called background
    loss = lovasz_softmax(_hard_logits(prediction, 12)[:, :11], targets, ignore_index=11)
    # 30 columns scored: background IoU 29/30, pole IoU 0 -> the mean of their losses (1/30, 1)
    assert loss.item() == pytest.approx((1 / 30 + 1.0) / 2, abs=1e-5)
    logits = torch.zeros(1, 11, 32, 32, requires_grad=True)
    lovasz_softmax(logits, targets, ignore_index=11).backward()
    assert logits.grad[0, 1, :, 10].lt(0).all()  # it raises the pole's score where the pole is


def test_lovasz_softmax_of_void_only_is_zero_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = lovasz_softmax(logits, torch.full((1, 4, 4), 11), ignore_index=11)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
