import pytest
import torch
import torch.nn.functional as F

from cream.training.losses import cream_loss, dpo_logits


def test_dpo_logits():
    h = dpo_logits(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5]), beta=0.1)
    assert h.item() == pytest.approx(0.1 * ((-10 + 11) - (-12 + 11.5)))


@pytest.mark.parametrize("h", [-3.0, -0.2, 0.0, 0.7, 5.0])
def test_target_one_is_sigmoid_dpo_and_target_zero_flips_it(h):
    h = torch.tensor([h])
    assert cream_loss(h, torch.tensor([1.0])).item() == pytest.approx(-F.logsigmoid(h).item())
    assert cream_loss(h, torch.tensor([0.0])).item() == pytest.approx(-F.logsigmoid(-h).item())


def test_half_confidence_has_zero_gradient_at_zero():
    h = torch.zeros(1, requires_grad=True)
    cream_loss(h, torch.tensor([0.5])).sum().backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-7)
    h2 = torch.zeros(1, requires_grad=True)
    cream_loss(h2, torch.tensor([0.8])).sum().backward()
    assert h2.grad.item() < 0  # confident labels push h up


@pytest.mark.parametrize("h, target", [(0.3, 0.9), (-1.2, 0.6), (2.0, 0.1)])
def test_swapping_chosen_and_rejected_with_one_minus_target_is_the_same_loss(h, target):
    # swapping the pair negates h
    assert cream_loss(torch.tensor([h]), torch.tensor([target])).item() == pytest.approx(
        cream_loss(torch.tensor([-h]), torch.tensor([1 - target])).item()
    )


def test_constant_target_is_label_smoothing():
    h, eps = torch.tensor([0.4, -0.3]), 0.2
    smoothed = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    assert torch.allclose(cream_loss(h, torch.full((2,), 1 - eps)), smoothed)
