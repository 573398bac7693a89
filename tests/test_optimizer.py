"""SIMoEAdamW: element-wise it is torch's AdamW; row-wise a gate moves with its own force."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from simoe.training.optimizer import SIMoEAdamW


def _run(opt_cls, params, grads_per_step, **kw):
    opt = opt_cls(params, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def test_element_mode_is_torch_adamw():
    torch.manual_seed(0)
    init = [torch.randn(3, 5), torch.randn(7)]
    grads = [[torch.randn(3, 5), torch.randn(7)] for _ in range(6)]
    kw = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ours = _run(SIMoEAdamW, [p.clone().requires_grad_() for p in init], grads, **kw)
    ref = _run(torch.optim.AdamW, [p.clone().requires_grad_() for p in init], grads, **kw)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_row_mode_shares_the_second_moment_of_each_row():
    """Two rows, gradients constant in time: after one step Adam's bias corrections give
    m_hat = g, v_hat = mean_row(g^2), so the step is lr g / rms_row(g) (eps = 0)."""
    g = torch.tensor([[1.0, 0.1, -0.5, 0.0], [100.0, 200.0, 0.0, 0.0]])
    p = torch.zeros_like(g, requires_grad=True)
    _run(SIMoEAdamW, [p], [[g]], lr=0.1, eps=0.0, second_moment="row")
    rms = g.pow(2).mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(p.detach(), -0.1 * g / rms)
    # Element-wise Adam would have moved every gate with a non-zero gradient by exactly lr.
    q = torch.zeros_like(g, requires_grad=True)
    _run(SIMoEAdamW, [q], [[g]], lr=0.1, eps=1e-12)
    torch.testing.assert_close(q.detach().abs(), 0.1 * (g != 0).float(), rtol=1e-5, atol=1e-6)


def test_row_mode_keeps_the_ratio_of_forces_over_many_steps():
    """A pressure p on every gate plus a data force n_j opposing it: with the row's shared
    second moment the gates end in the order of n_j, spread in proportion to it."""
    pressure = torch.full((1, 4), 1.0)
    resist = torch.tensor([[0.0, 0.2, 0.4, 0.8]])
    p = torch.zeros(1, 4, requires_grad=True)
    _run(SIMoEAdamW, [p], [[pressure - resist]] * 50, lr=0.01, second_moment="row")
    moved = -p.detach()[0]
    assert moved[0] > moved[1] > moved[2] > moved[3] > 0
    ratio = (moved / moved[0]).tolist()
    assert ratio == pytest.approx([1.0, 0.8, 0.6, 0.2], rel=1e-4)
    q = torch.zeros(1, 4, requires_grad=True)
    _run(SIMoEAdamW, [q], [[pressure - resist]] * 50, lr=0.01)
    assert (-q.detach()[0]).tolist() == pytest.approx([0.5] * 4, rel=1e-4)  # lockstep


def test_optimizer_state_round_trips():
    torch.manual_seed(1)
    p = torch.randn(2, 3, requires_grad=True)
    opt = SIMoEAdamW([p], lr=0.1, second_moment="row")
    p.grad = torch.randn(2, 3)
    opt.step()
    q = p.detach().clone().requires_grad_()
    opt2 = SIMoEAdamW([q], lr=0.1, second_moment="row")
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a checkpoint file
    g = torch.randn(2, 3)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)
    assert opt.state[p]["exp_avg_sq"].shape == (2, 1)


@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(betas=(1.0, 0.9)),
                                dict(second_moment="column")])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        SIMoEAdamW([torch.zeros(2, requires_grad=True)], **kw)


def test_bias_correction_matches_the_formula():
    g = torch.tensor([[0.3, -0.4]])
    p = torch.zeros(1, 2, requires_grad=True)
    _run(SIMoEAdamW, [p], [[g], [g]], lr=1.0, betas=(0.5, 0.5), eps=0.0, second_moment="row")
    # m_hat = g at every step for a constant gradient; v_hat = mean(g^2) likewise.
    step = g / math.sqrt(float(g.pow(2).mean()))
    torch.testing.assert_close(p.detach(), -2 * step)
