"""sidkit.models.layers: the CPU dropout that replaces nn.Dropout in the recommenders."""

import pytest

torch = pytest.importorskip("torch")

from sidkit.models.layers import dropout  # noqa: E402


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales():
    torch.manual_seed(0)
    layer = dropout(0.2).train()
    x = torch.ones(400, 500)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005          # 200k draws: sd 0.0009
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1.25))  # kept values are x / (1 - p)
    assert y.dtype == x.dtype


def test_dropout_backward_multiplies_by_the_same_mask():
    torch.manual_seed(1)
    layer = dropout(0.5).train()
    x = torch.randn(64, 32, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_0_and_has_no_state():
    x = torch.randn(8, 8)
    assert layer_out(dropout(0.3).eval(), x) is x
    assert layer_out(dropout(0.0).train(), x) is x
    assert dropout(0.3).state_dict() == {} == torch.nn.Dropout(0.3).state_dict()
    assert "p=0.3" in repr(dropout(0.3))


def layer_out(layer, x):
    return layer(x)


def test_dropout_is_reproducible_from_the_torch_seed():
    layer = dropout(0.2).train()
    torch.manual_seed(5)
    a = layer(torch.ones(100))
    torch.manual_seed(5)
    assert torch.equal(a, layer(torch.ones(100)))
