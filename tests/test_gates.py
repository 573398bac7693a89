"""Hard-concrete gates: formulas, expected L0 against Monte Carlo, initialisation."""

from __future__ import annotations

import math

import torch

from simoe.gated_delta import GatedDelta
from simoe.gates import (
    BETA,
    GAMMA,
    ZETA,
    deterministic_gate,
    expected_l0,
    init_log_alpha,
    init_mean,
    stochastic_gate,
)


def test_deterministic_gate_matches_the_formula_and_hits_exact_zeros_and_ones():
    la = torch.tensor([-10.0, -1.0, 0.0, 1.35, 10.0])
    s = 1 / (1 + torch.exp(-la / BETA)) * (ZETA - GAMMA) + GAMMA
    assert torch.allclose(deterministic_gate(la), s.clamp(0, 1))
    z = deterministic_gate(la)
    assert z[0] == 0.0 and z[-1] == 1.0 and 0 < z[2] < 1


def test_expected_l0_matches_monte_carlo_of_the_stochastic_gate():
    torch.manual_seed(0)
    la = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.35, 3.0])
    samples = stochastic_gate(la.expand(200_000, -1))
    mc = (samples > 0).float().mean(0)
    assert torch.allclose(expected_l0(la), mc, atol=0.005), (expected_l0(la), mc)


def test_gates_are_fp32_for_bf16_logits():
    la = torch.zeros(4, dtype=torch.bfloat16)
    assert deterministic_gate(la).dtype == torch.float32
    assert expected_l0(la).dtype == torch.float32


def test_init_mean_gives_the_drop_probability_in_closed_form():
    mu = init_mean(0.05)
    assert abs(mu - 1.3459) < 1e-3
    assert math.isclose(1 - expected_l0(torch.tensor(mu)).item(), 0.05, rel_tol=1e-6)


def test_initialised_gates_are_zero_with_probability_0_05_empirically():
    torch.manual_seed(0)
    gd = GatedDelta(50_000, rows=None, num_experts=8, init_mean=init_mean(0.05), noise_std=0.01)
    z = stochastic_gate(gd.log_alpha)
    frac_zero = (z == 0).float().mean().item()
    assert abs(frac_zero - 0.05) <= 0.005, frac_zero
    # The noise breaks the symmetry between experts, but only slightly.
    assert gd.log_alpha.std().item() > 0
    assert abs(gd.log_alpha.std().item() - 0.01) < 1e-3


def test_init_log_alpha_fills_in_place():
    t = torch.empty(3, 1000)
    out = init_log_alpha(t, 0.05, 0.0)
    assert out is t and torch.all(t == init_mean(0.05))


def test_deterministic_gate_closes_exactly_where_expected_l0_is_one_half():
    from simoe.gates import CLOSED_BELOW, L0_SHIFT, OPEN_ABOVE
    assert CLOSED_BELOW == L0_SHIFT and abs(CLOSED_BELOW + 1.5986) < 1e-3
    assert math.isclose(expected_l0(torch.tensor(CLOSED_BELOW)).item(), 0.5, rel_tol=1e-6)
    la = torch.tensor([CLOSED_BELOW - 1e-4, CLOSED_BELOW + 1e-3, OPEN_ABOVE - 1e-3,
                       OPEN_ABOVE + 1e-4])
    z = deterministic_gate(la)
    assert z[0] == 0.0 and 0 < z[1] < z[2] < 1 and z[3] == 1.0
