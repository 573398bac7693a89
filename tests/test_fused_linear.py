"""The fused SIMoE linear (GatedDeltaLinear): same outputs and gradients as the plain autograd
form, and as explicitly merged fp64 weights; it keeps fewer tensors alive for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from simoe.gated_delta import GatedDeltaLinear, broadcast_like
from simoe.gates import init_mean
from simoe.layers import RoutingState, SIMoELinear


def _unfused(x, m, delta, live_idx):
    """The delta path as plain autograd ops (the form before the fused function)."""
    xs = x if live_idx is None else x.index_select(-1, live_idx)
    return F.linear(xs * broadcast_like(m, x).to(x.dtype), delta.to(x.dtype))


def _inputs(token: bool, pruned: bool, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t, n_in, n_out = 3, 5, 8, 4
    x = torch.randn(b, t, n_in, generator=g, dtype=dtype, requires_grad=True)
    live = torch.tensor([0, 2, 3, 6, 7]) if pruned else None
    k = live.numel() if pruned else n_in
    m = torch.rand(*((b, t) if token else (b,)), k, generator=g, requires_grad=True)
    delta = torch.randn(n_out, k, generator=g, requires_grad=True)
    return x, m, delta, live


@pytest.mark.parametrize("token", [False, True])
@pytest.mark.parametrize("pruned", [False, True])
def test_fused_matches_the_plain_autograd_form(token, pruned):
    x, m, delta, live = _inputs(token, pruned)
    w = torch.randn(3, 5, 4)  # a fixed upstream gradient
    y = GatedDeltaLinear.apply(x, m, delta, live)
    grads = torch.autograd.grad((y * w).sum(), (x, m, delta))
    y_ref = _unfused(x, m, delta, live)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), (x, m, delta))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert grads[1].shape == m.shape


@pytest.mark.parametrize("token", [False, True])
def test_fused_with_no_live_column_gives_zeros(token):
    """A tensor that compaction emptied: output and gradients are zeros of the right shapes."""
    x = torch.randn(3, 5, 8, requires_grad=True)
    m = torch.rand(*((3, 5) if token else (3,)), 0, requires_grad=True)
    delta = torch.randn(4, 0, requires_grad=True)
    y = GatedDeltaLinear.apply(x, m, delta, torch.zeros(0, dtype=torch.long))
    assert y.shape == (3, 5, 4) and not y.any()
    gx, gm, gd = torch.autograd.grad(y.sum(), (x, m, delta))
    assert gx.shape == x.shape and not gx.any()
    assert gm.shape == m.shape and gd.shape == delta.shape


def test_fused_passes_gradcheck_in_fp64():
    for token in (False, True):
        x, m, delta, live = _inputs(token, True, dtype=torch.float64)
        m = m.detach().double().requires_grad_()
        delta = delta.detach().double().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b, c, i=live: GatedDeltaLinear.apply(a, b, c, i),
                                        (x, m, delta))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_layer_gradients_equal_explicitly_merged_fp64_weights(kind):
    """Gradients of delta, gate logits and routing weights through the SIMoE linear equal
    those of y_b = x_b (W_pre + sum_i alpha_bi z_i * delta)^T computed in fp64."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5, bias=False) if kind == "linear" else Conv1D(5, 6)
    state = RoutingState()
    kw = dict(num_experts=3, init_mean=init_mean(0.05), noise_std=0.01,
              straight_through=False)
    layer = SIMoELinear(base, state, kw, target_bias=False)
    wd = layer.weight_delta
    with torch.no_grad():
        wd.delta.normal_()
        wd.log_alpha.uniform_(-1.0, 1.0)  # every gate strictly inside (0, 1): smooth
    wd.keep_columns(torch.tensor([True, False, True, True, False, True]))
    logits = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(4, 7, 6)
    up = torch.randn(4, 7, 5)
    state.alpha = torch.softmax(logits, -1)
    layer.train()
    loss = (layer(x) * up).sum()
    got = torch.autograd.grad(loss, (wd.delta, wd.log_alpha, logits))

    d64 = wd.delta.detach().double().requires_grad_()
    la64 = wd.log_alpha.detach().double().requires_grad_()
    lg64 = logits.detach().double().requires_grad_()
    z = (torch.sigmoid(la64 / (2 / 3)) * 1.2 - 0.1).clamp(0, 1)
    alpha = torch.softmax(lg64, -1)
    w_pre = (base.weight.T if kind == "conv1d" else base.weight).double()
    ys = []
    for b in range(4):
        w = w_pre.clone()
        mixed = sum(alpha[b, i] * z[i][None, :] * d64 for i in range(3))
        w = w.index_add(1, wd.live_idx, mixed)
        ys.append(x[b].double() @ w.T)
    ref_loss = (torch.stack(ys) * up.double()).sum()
    ref = torch.autograd.grad(ref_loss, (d64, la64, lg64))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_fused_keeps_fewer_tensors_for_backward():
    """Bytes saved for backward by the delta path: the fused node keeps x (shared with the
    base linear), m and delta; the plain form also keeps x * m, a [B, T, k] copy."""
    def saved_bytes(fn):
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.data_ptr()] = t.numel() * t.element_size()
            return t

        x, m, delta, live = _inputs(False, False)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, m, delta, live)
        return sum(seen.values()) - x.numel() * x.element_size()  # x is kept by the base

    fused = saved_bytes(GatedDeltaLinear.apply)
    plain = saved_bytes(_unfused)
    x, m, delta, _ = _inputs(False, False)
    assert fused == m.numel() * 4 + delta.numel() * 4
    assert plain >= fused + x.numel() * x.element_size()


def test_fused_in_bf16_tracks_fp32():
    x, m, delta, live = _inputs(True, True)
    y32 = GatedDeltaLinear.apply(x, m, delta, live)
    g32 = torch.autograd.grad(y32.sum(), (m, delta))
    xb = x.detach().bfloat16().requires_grad_()
    yb = GatedDeltaLinear.apply(xb, m, delta, live)
    assert yb.dtype == torch.bfloat16
    gb = torch.autograd.grad(yb.float().sum(), (m, delta))
    assert gb[0].dtype == torch.float32 and gb[1].dtype == torch.float32
    torch.testing.assert_close(yb.float(), y32, rtol=0.05, atol=0.05)
    for a, b in zip(gb, g32, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.1)
