"""The objective against hand-computed values (SIMOE.md section 2)."""

from __future__ import annotations

import math

import pytest
import torch

from simoe.gates import L0_SHIFT
from simoe.layers import GatedDelta
from simoe.objective import (
    Lagrangian,
    expected_sparsity,
    mean_overlap,
    measured_sparsity,
    orthogonality,
    overlap_matrix,
    routing_entropy,
)

ON, OFF = 10.0, -10.0


def _two_tensors():
    """A 3x4 matrix (column gates, 3 params each) and a 2-vector, 2 experts: 14 parameters.

    expert 0: columns [1, 1, 0, 0], elements [1, 0]  -> keeps 3*2 + 1 = 7 of 14
    expert 1: columns [0, 1, 1, 0], elements [0, 0]  -> keeps 3*2 + 0 = 6 of 14
    """
    mat = GatedDelta(4, 3, num_experts=2, init_mean=0.0, noise_std=0.0)
    vec = GatedDelta(2, None, num_experts=2, init_mean=0.0, noise_std=0.0)
    with torch.no_grad():
        mat.log_alpha.copy_(torch.tensor([[ON, ON, OFF, OFF], [OFF, ON, ON, OFF]]))
        vec.log_alpha.copy_(torch.tensor([[ON, OFF], [OFF, OFF]]))
    return [mat, vec]


def test_measured_sparsity_is_parameter_weighted():
    s = measured_sparsity(_two_tensors())
    assert s["per_expert"] == pytest.approx([7 / 14, 8 / 14])
    assert s["mean"] == pytest.approx((7 / 14 + 8 / 14) / 2)
    # union: columns 0, 1, 2 (9 params) and element 0 (1 param) are kept by some expert
    assert s["union"] == pytest.approx(4 / 14)


def test_pruned_columns_count_as_gated_off():
    mat, vec = _two_tensors()
    mat.keep_columns(torch.tensor([True, True, True, False]))
    assert measured_sparsity([mat, vec]) == measured_sparsity(_two_tensors())


def test_expected_sparsity_by_hand():
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p_on, p_off = sig(ON - L0_SHIFT), sig(OFF - L0_SHIFT)
    kept0 = 3 * (2 * p_on + 2 * p_off) + (p_on + p_off)
    kept1 = 3 * (2 * p_on + 2 * p_off) + 2 * p_off
    want_mean = 1 - (kept0 + kept1) / 2 / 14
    got = expected_sparsity(_two_tensors(), "mean")
    assert got.item() == pytest.approx(want_mean, abs=1e-6)
    any_on = lambda a, b: 1 - (1 - a) * (1 - b)  # noqa: E731
    kept_union = 3 * (any_on(p_on, p_off) + any_on(p_on, p_on) + any_on(p_off, p_on)
                      + any_on(p_off, p_off)) + any_on(p_on, p_off) + any_on(p_off, p_off)
    got_union = expected_sparsity(_two_tensors(), "union")
    assert got_union.item() == pytest.approx(1 - kept_union / 14, abs=1e-6)


def test_expected_sparsity_has_gradient_towards_sparser_gates():
    gated = _two_tensors()
    with torch.no_grad():
        for gd in gated:
            gd.log_alpha.zero_()
    expected_sparsity(gated).backward()
    # d(sparsity)/d(log_alpha) < 0, so descent on lambda * (tau - sparsity) lowers every logit
    assert all((gd.log_alpha.grad < 0).all() for gd in gated)


def test_orthogonality_by_hand():
    # Z = [[1,1,0,0,1,0],[0,1,1,0,0,0]] -> ZZ^T - I = [[2,1],[1,1]] -> ||.||_F = sqrt(7)
    assert orthogonality(_two_tensors()).item() == pytest.approx(math.sqrt(7), abs=1e-5)


def test_overlap_matrix_by_hand():
    # |kept0 & kept1| = column 1 (3 params); |kept0 | kept1| = 7 + 6 - 3 = 10
    m = overlap_matrix(_two_tensors())
    assert [v for row in m for v in row] == pytest.approx([1.0, 0.3, 0.3, 1.0])
    assert mean_overlap(m) == pytest.approx(0.3)


def test_lagrangian_ascends_and_resets_when_satisfied():
    lag = Lagrangian(target=0.5, lr=1.0)
    assert lag.update(0.2) == pytest.approx(0.3)
    assert lag.update(0.3) == pytest.approx(0.5)
    assert lag.penalty(torch.tensor(0.1)).item() == pytest.approx(0.5 * 0.4)
    assert lag.update(0.5) == 0.0  # constraint holds: reset, not a slow decrease
    assert lag.update(0.45) == pytest.approx(0.05)
    lag2 = Lagrangian(target=0.75, lr=0.5)
    assert lag2.update(0.0) == pytest.approx(0.375)


def test_routing_entropy():
    uniform = torch.full((3, 4), 0.25)
    assert routing_entropy(uniform).item() == pytest.approx(math.log(4))
    assert routing_entropy(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
