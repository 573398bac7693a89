"""The objective against hand-computed values (SIMOE.md section 2)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from simoe.constraint import Lagrangian, target_at
from simoe.gated_delta import GatedDelta
from simoe.gates import (
    BETA,
    CLOSED_BELOW,
    GAMMA,
    L0_SHIFT,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    OPEN_ABOVE,
    ZETA,
    deterministic_gate,
    expected_l0,
)
from simoe.objective import (
    CONSTRAINTS,
    clamp_log_alpha_,
    expected_sparsity,
    expected_sparsity_per_expert,
    mean_overlap,
    measured_constraint,
    measured_sparsity,
    num_gates,
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


# ------------------------------------------------------------------ wave 2: constraints


def _random_tensors(seed: int = 0, experts: int = 3):
    """A 5x6 matrix, a 2x4 matrix and a 7-vector with random logits over [-3, 3]."""
    g = torch.Generator().manual_seed(seed)
    gated = [GatedDelta(6, 5, experts, 0.0, 0.0), GatedDelta(4, 2, experts, 0.0, 0.0),
             GatedDelta(7, None, experts, 0.0, 0.0)]
    with torch.no_grad():
        for gd in gated:
            gd.log_alpha.copy_(torch.rand(gd.log_alpha.shape, generator=g) * 6 - 3)
    return gated


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_constraints_tuple():
    assert CONSTRAINTS == ("union", "mean", "per-expert")


def test_expected_sparsity_per_expert_against_a_loop():
    gated = _random_tensors()
    total = 5 * 6 + 2 * 4 + 7
    want = []
    for i in range(3):
        kept = 0.0
        for gd in gated:
            w = gd.rows if gd.rows is not None else 1
            for c in range(gd.full_size):
                kept += w * _sig(float(gd.log_alpha.detach()[i, c]) - L0_SHIFT)
        want.append(1 - kept / total)
    got = expected_sparsity_per_expert(gated)
    assert got.shape == (3,)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert expected_sparsity(gated, "per-expert").tolist() == pytest.approx(want, abs=1e-6)
    # the mean over experts is the 'mean' constraint
    assert expected_sparsity(gated, "mean").item() == pytest.approx(sum(want) / 3, abs=1e-6)
    # differentiable: expert 1's sparsity depends on expert 1's logits only
    got[1].backward()
    for gd in gated:
        assert (gd.log_alpha.grad[1] < 0).all()
        assert (gd.log_alpha.grad[[0, 2]] == 0).all()


def test_expected_sparsity_per_expert_counts_pruned_columns_as_off():
    mat, vec = _two_tensors()
    before = expected_sparsity_per_expert([mat, vec])
    mat.keep_columns(torch.tensor([True, True, True, False]))
    after = expected_sparsity_per_expert([mat, vec])
    # the dropped column was OFF for both (p_on = sigmoid(-10 - shift)); now exactly off
    p_off = _sig(OFF - L0_SHIFT)
    assert (after - before).tolist() == pytest.approx([3 * p_off / 14] * 2, abs=1e-7)


def test_measured_constraint_picks_the_bounded_figure():
    gated = _two_tensors()
    assert measured_constraint(gated, "mean") == pytest.approx(15 / 28)
    assert measured_constraint(gated, "union") == pytest.approx(4 / 14)
    assert measured_constraint(gated, "per-expert") == pytest.approx([7 / 14, 8 / 14])


@pytest.mark.parametrize("call", [
    lambda g: expected_sparsity(g, "max"),
    lambda g: measured_constraint(g, "per_expert"),
])
def test_unknown_constraint_is_rejected(call):
    with pytest.raises(ValueError, match="constraint must be one of"):
        call(_two_tensors())


# ------------------------------------------------------------------ Lagrangian, per expert


def test_per_expert_lagrangian_updates_and_resets_each_row_separately():
    lag = Lagrangian.per_expert(target=0.5, lr=2.0, num_experts=3)
    assert lag.is_per_expert and lag.value == [0.0, 0.0, 0.0]
    assert lag.update([0.2, 0.5, 0.4]) == pytest.approx([0.6, 0.0, 0.2])
    assert lag.update([0.3, 0.1, 0.6]) == pytest.approx([1.0, 0.8, 0.0])  # row 2 resets
    assert lag.update([0.5, 0.3, 0.45]) == pytest.approx([0.0, 1.2, 0.1])  # row 0 resets
    # the schedule's current target, one for all rows or one per row
    assert lag.update([0.1, 0.1, 0.1], target=0.1) == pytest.approx([0.0, 0.0, 0.0])
    assert lag.update([0.0, 0.0, 0.0], target=[0.1, 0.2, 0.0]) == pytest.approx([0.2, 0.4, 0.0])
    assert lag.current_target == [0.1, 0.2, 0.0]


def test_per_expert_penalty_is_the_sum_over_rows():
    lag = Lagrangian(0.75, 1.0, [0.5, 0.0, 2.0])
    expected = torch.tensor([0.25, 0.5, 0.7], requires_grad=True)
    pen = lag.penalty(expected)
    assert pen.item() == pytest.approx(0.5 * 0.5 + 0 + 2.0 * 0.05)
    pen.backward()
    assert expected.grad.tolist() == pytest.approx([-0.5, 0.0, -2.0])
    w = torch.tensor([0.2, 0.3, 0.5])
    assert lag.penalty(expected, weights=w).item() == pytest.approx(0.2 * 0.25 + 0.5 * 0.1)
    assert lag.penalty(expected, target=0.5).item() == pytest.approx(0.5 * 0.25 - 2.0 * 0.2)
    with pytest.raises(ValueError, match="shape"):
        lag.penalty(torch.tensor(0.3))


def test_scalar_lagrangian_keeps_its_float_value_and_takes_the_target():
    lag = Lagrangian(0.75, 0.5)
    assert not lag.is_per_expert and isinstance(lag.value, float)
    assert lag.update(0.0, target=0.25) == pytest.approx(0.125)
    assert isinstance(lag.value, float) and lag.current_target == 0.25
    # the value uses the last target, the gradient does not depend on it
    assert lag.penalty(torch.tensor(0.05)).item() == pytest.approx(0.125 * 0.2)
    assert lag.update(0.3, target=0.25) == 0.0


def test_lagrangian_state_is_json_and_round_trips():
    lag = Lagrangian.per_expert(0.75, 0.1, 2)
    lag.update([0.25, 0.8], target=0.5)
    state = json.loads(json.dumps(lag.state_dict()))
    fresh = Lagrangian.per_expert(0.75, 0.1, 2)
    fresh.load_state_dict(state)
    assert fresh.value == lag.value and fresh.current_target == [0.5, 0.5]
    scalar = Lagrangian(0.75, 0.1)
    scalar.load_state_dict({"lambda": 0.3})  # the trainer's older checkpoints
    assert scalar.value == 0.3
    with pytest.raises(ValueError, match="another constraint"):
        scalar.load_state_dict(state)
    with pytest.raises(ValueError, match="another constraint"):
        Lagrangian.per_expert(0.75, 0.1, 3).load_state_dict(state)


@pytest.mark.parametrize("kwargs, match", [
    ({"target": -0.1}, "target sparsity"),
    ({"target": 1.0}, "target sparsity"),
    ({"target": 0.5, "lr": 0.0}, "lr"),
    ({"target": 0.5, "value": [0.1, -1.0]}, ">= 0"),
])
def test_lagrangian_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lagrangian(**kwargs)


def test_lagrangian_rejects_mismatched_rows():
    lag = Lagrangian.per_expert(0.5, 1.0, 3)
    with pytest.raises(ValueError, match="3 multipliers"):
        lag.update([0.1, 0.2])
    with pytest.raises(ValueError, match="target sparsity"):
        lag.update([0.1, 0.2, 0.3], target=-0.5)


# ------------------------------------------------------------------ target schedule


def test_target_schedule():
    assert target_at(0, 1000, 0.75, 0.2) == 0.0
    assert target_at(100, 1000, 0.75, 0.2) == pytest.approx(0.375)  # half-way up the ramp
    assert target_at(200, 1000, 0.75, 0.2) == 0.75  # end of warm-up
    assert target_at(999, 1000, 0.75, 0.2) == 0.75
    assert target_at(0, 1000, 0.75, 0.0) == 0.75  # no warm-up: tau from step 0
    assert target_at(500, 1000, 0.75, 1.0) == pytest.approx(0.375)
    assert target_at(0, 0, 0.5, 0.5) == 0.5


@pytest.mark.parametrize("args, match", [
    ((0, 100, 0.75, -0.1), "warmup_fraction"),
    ((0, 100, 0.75, 1.5), "warmup_fraction"),
    ((0, 100, -0.2, 0.1), "target sparsity"),
    ((-1, 100, 0.75, 0.1), ">= 0"),
])
def test_target_schedule_validates(args, match):
    with pytest.raises(ValueError, match=match):
        target_at(*args)


# ------------------------------------------------------------------ orthogonality


def _offdiag_by_loop(gated) -> float:
    num = 0.0
    total = 0.0
    m = gated[0].log_alpha.shape[0]
    for gd in gated:
        z = deterministic_gate(gd.log_alpha.detach().double()).double()
        w = gd.rows if gd.rows is not None else 1
        total += w * gd.full_size
        for c in range(gd.num_live):
            for i, j in itertools.product(range(m), range(m)):
                if i != j:
                    num += w * float(z[i, c]) * float(z[j, c])
    return num / total


def test_offdiag_orthogonality_against_a_double_loop():
    gated = _random_tensors(seed=1, experts=4)
    got = orthogonality(gated, form="offdiag").item()
    assert got == pytest.approx(_offdiag_by_loop(gated), rel=1e-6)
    assert 0 <= got <= 4 * 3


def test_offdiag_orthogonality_by_hand_and_bounds():
    # _two_tensors: experts share column 1 (3 params) only -> 2 * 3 / 14
    assert orthogonality(_two_tensors(), form="offdiag").item() == pytest.approx(6 / 14)
    # disjoint experts: 0; every gate open for every expert: M(M-1)
    mat = GatedDelta(4, 3, num_experts=3, init_mean=0.0, noise_std=0.0)
    with torch.no_grad():
        mat.log_alpha.fill_(ON)
    assert orthogonality([mat], form="offdiag").item() == pytest.approx(6.0)
    with torch.no_grad():
        mat.log_alpha.fill_(OFF)
        mat.log_alpha[0, :2] = ON
        mat.log_alpha[1, 2:] = ON
    assert orthogonality([mat], form="offdiag").item() == 0.0


def test_offdiag_orthogonality_of_free_masks_is_bounded_below():
    """Ablation (c): real-valued masks of opposite signs must not make the overlap negative
    (a 128-step run diverged to a loss of -2600 that way): the penalty is that of |z|."""
    free = GatedDelta(3, 4, num_experts=2, init_mean=0.0, noise_std=0.0, mode="free")
    with torch.no_grad():
        free.log_alpha.copy_(torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0]]))
    got = orthogonality([free], form="offdiag")
    # pairs (0, 1) and (1, 0): 2 * sum_c |z_0c| |z_1c| * 4 rows / (4 * 3 parameters)
    assert got.item() == pytest.approx(2 * (6.0 + 1.0 + 0.0) * 4 / 12)
    free.log_alpha.grad = None
    got.backward()
    assert free.log_alpha.grad[0, 0] > 0 and free.log_alpha.grad[1, 0] < 0  # magnitudes shrink


def test_offdiag_orthogonality_does_not_grow_with_the_model():
    gated = _random_tensors(seed=2)
    base = orthogonality(gated, form="offdiag").item()
    for k in (2, 5):
        copies = []
        for gd in gated:
            for _ in range(k):
                dup = GatedDelta(gd.full_size, gd.rows, 3, 0.0, 0.0)
                with torch.no_grad():
                    dup.log_alpha.copy_(gd.log_alpha)
                copies.append(dup)
        assert orthogonality(copies, form="offdiag").item() == pytest.approx(base, rel=1e-6)
        assert num_gates(copies) == k * num_gates(gated)
        # the literal form grows with the model
        assert orthogonality(copies).item() > 1.5 * orthogonality(gated).item()


def test_offdiag_gradient_matches_its_formula_and_pruned_columns_count():
    gated = _random_tensors(seed=3)
    orthogonality(gated, form="offdiag").backward()
    total = 5 * 6 + 2 * 4 + 7
    gd = gated[0]
    la = gd.log_alpha.detach()
    z = deterministic_gate(la)
    dz = torch.autograd.functional.jacobian(lambda x: deterministic_gate(x), la[0, 0])
    want = 2 * 5 * (z[:, 0].sum() - z[0, 0]) / total * dz
    assert gd.log_alpha.grad[0, 0].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-9)
    # pruning a column both experts had closed changes nothing: D counts pruned columns
    mat, vec = _two_tensors()
    before = orthogonality([mat, vec], form="offdiag").item()
    mat.keep_columns(torch.tensor([True, True, True, False]))
    assert orthogonality([mat, vec], form="offdiag").item() == pytest.approx(before)


def test_literal_orthogonality_is_unchanged_and_default():
    gated = _random_tensors(seed=4)
    z = torch.cat([deterministic_gate(gd.log_alpha.detach()).double() for gd in gated], dim=1)
    gram = z @ z.t() - torch.eye(3, dtype=torch.float64)
    want = math.sqrt(float((gram * gram).sum()))
    assert orthogonality(gated).item() == pytest.approx(want, rel=1e-5)
    assert orthogonality(gated, form="literal").item() == orthogonality(gated).item()
    with pytest.raises(ValueError, match="orthogonality form"):
        orthogonality(gated, form="frobenius")


# ------------------------------------------------------------------ clamp


def test_clamp_log_alpha_keeps_closed_gates_near_the_reopening_threshold():
    assert LOG_ALPHA_MIN == pytest.approx(-4.6052, abs=1e-4)
    assert LOG_ALPHA_MAX == pytest.approx(4.6052, abs=1e-4)
    # the thresholds of the deterministic gate
    assert deterministic_gate(torch.tensor(CLOSED_BELOW - 1e-3)).item() == 0.0
    assert deterministic_gate(torch.tensor(CLOSED_BELOW + 1e-2)).item() > 0.0
    assert deterministic_gate(torch.tensor(OPEN_ABOVE + 1e-3)).item() == 1.0
    gated = _two_tensors()  # logits at +-10
    clamp_log_alpha_(gated)
    for gd in gated:
        assert gd.log_alpha.abs().max().item() == pytest.approx(LOG_ALPHA_MAX)
        assert isinstance(gd.log_alpha, torch.nn.Parameter)
    # still the same gates
    assert measured_sparsity(gated) == measured_sparsity(_two_tensors())
    t = torch.tensor([-7.0, 0.5, 9.0])
    clamp_log_alpha_([t], -1.0, 1.0)
    assert t.tolist() == [-1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="low < high"):
        clamp_log_alpha_([t], 1.0, -1.0)


def test_a_clamped_closed_gate_gets_gradient_only_from_the_expected_l0():
    la = torch.tensor([LOG_ALPHA_MIN], requires_grad=True)
    deterministic_gate(la).sum().backward()
    assert la.grad.item() == 0.0  # NLL and ortho act through z: nothing reaches the logit
    la.grad = None
    expected_l0(la).sum().backward()
    assert la.grad.item() == pytest.approx(0.045, abs=2e-3)  # smooth: still a gradient


# ------------------------------------------------------------------ hold, ramp, weights, STE


def test_ramp_holds_then_rises_linearly():
    from simoe.constraint import ramp

    assert [ramp(s, 100, 0.5, 0.1) for s in (0, 9, 10, 30, 50, 99)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    assert target_at(30, 100, 0.75, 0.5, 0.1) == pytest.approx(0.375)
    assert ramp(0, 100, 0.0, 0.0) == 1.0  # no warm-up: full pressure from the start
    with pytest.raises(ValueError, match="hold_fraction"):
        ramp(0, 100, 0.3, 0.5)


def test_weighted_offdiag_orthogonality_weights_each_pair():
    gated = _random_tensors(seed=2, experts=3)
    w = torch.tensor([0.5, 1.0, 2.0])
    m = 3
    want = 0.0
    total = sum((gd.rows or 1) * gd.full_size for gd in gated)
    for gd in gated:
        z = deterministic_gate(gd.log_alpha.detach()).double()
        for i, j in itertools.product(range(m), range(m)):
            if i != j:
                want += float(w[i] * w[j]) * (gd.rows or 1) * float((z[i] * z[j]).sum())
    got = orthogonality(gated, form="offdiag", weights=w).item()
    assert got == pytest.approx(want / total, rel=1e-6)


def test_straight_through_gate_gives_a_closed_gate_the_data_gradient():
    la = torch.tensor([-3.0, 0.5], requires_grad=True)
    z = deterministic_gate(la, straight_through=True)
    assert z.tolist() == deterministic_gate(la.detach()).tolist()  # same values
    assert z[0].item() == 0.0
    (z * torch.tensor([2.0, 2.0])).sum().backward()
    s = torch.sigmoid(la.detach() / BETA)
    slope = s * (1 - s) / BETA * (ZETA - GAMMA)  # d s(log_alpha) / d log_alpha, unclamped
    assert la.grad.tolist() == pytest.approx((2 * slope).tolist(), rel=1e-6)
    la.grad = None
    deterministic_gate(la).sum().backward()  # the literal clamp: nothing reaches a closed gate
    assert la.grad[0].item() == 0.0


def test_two_sided_lagrangian_reopens_above_the_band_and_rests_inside_it():
    lag = Lagrangian(0.75, lr=0.5, band=0.02)
    assert lag.update(0.65) == pytest.approx(0.05)  # below tau: push sparser
    assert lag.update(0.76) == 0.0  # inside [tau, tau + band]: rest
    assert lag.update(0.87) == pytest.approx(-0.05)  # above: negative, gates reopen
    assert lag.update(0.87) == pytest.approx(-0.10)
    assert lag.update(0.70) == pytest.approx(0.025)  # back below: the sign flips at once
    expected = torch.tensor(0.8, requires_grad=True)
    lag.value = -0.1
    lag.penalty(expected).backward()
    assert expected.grad.item() == pytest.approx(0.1)  # minimising it lowers the sparsity
    with pytest.raises(ValueError, match="band"):
        Lagrangian(0.75, band=-0.1)
    with pytest.raises(ValueError, match=">= 0"):
        Lagrangian(0.75, value=-1.0)  # one-sided: no negative multiplier


@pytest.mark.parametrize("constraint", ["union", "per-expert"])
def test_projection_closes_the_least_committed_gates_until_tau_holds(constraint):
    from simoe.objective import project_to_target

    gated = _random_tensors(seed=3, experts=3)
    with torch.no_grad():
        for gd in gated:
            gd.log_alpha.uniform_(0.0, 3.0)  # everything open
    scores = [gd.log_alpha.detach().clone() for gd in gated]
    report = project_to_target(gated, 0.4, constraint)
    sp = measured_sparsity(gated)
    rows = [sp["union"]] if constraint == "union" else sp["per_expert"]
    assert all(r >= 0.4 for r in rows)
    assert report["before"]["union"] == 0.0 and report["closed_parameters"] > 0
    if constraint == "union":  # the lowest-ranked columns went first
        closed, kept = [], []
        for gd, la in zip(gated, scores, strict=True):
            shut = (deterministic_gate(gd.log_alpha) == 0).all(0)
            closed += la.max(0).values[shut].tolist()
            kept += la.max(0).values[~shut].tolist()
        assert max(closed) <= min(kept)
    again = project_to_target(gated, 0.4, constraint)  # already holds: nothing more closes
    assert again["closed_parameters"] == 0
