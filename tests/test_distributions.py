"""Tests for slotformer.distributions: masked categorical math in fp32."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slotformer.distributions import (
    MASKED_LOGIT_VALUE,
    InvalidStateMachineError,
    MaskedCategorical,
    check_logits_and_mask,
    greedy_actions,
    log_prob_of,
    mask_logits,
    masked_log_probs,
    normalised_entropy,
    sample_actions,
)
from slotformer.validation import validation

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FAST = settings(deadline=None, max_examples=40)


@st.composite
def masked_logits(draw: st.DrawFn, one_hot: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random leading shape, n, dtype, logit scale/offset and a mask with >= 1 valid per row."""
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    n = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, 300.0]))
    offset = draw(st.sampled_from([0.0, 50.0, MASKED_LOGIT_VALUE]))
    valid_fraction = draw(st.floats(0.0, 1.0))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = (torch.randn(*lead, n, generator=gen) * scale + offset).to(dtype)
    forced = torch.randint(0, n, lead, generator=gen).unsqueeze(-1)  # [..., 1]
    if one_hot:
        mask = torch.zeros(*lead, n, dtype=torch.bool)
    else:
        mask = torch.rand(*lead, n, generator=gen) < valid_fraction
    mask.scatter_(-1, forced, True)
    return logits, mask


min_probs = st.one_of(st.none(), st.sampled_from([0.0, 1e-6, 0.01, 0.1, 0.3, 0.9]))


# ---------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------


@FAST
@given(masked_logits(), min_probs, st.integers(0, 2**31 - 1))
def test_sampled_actions_are_valid_with_finite_log_prob(case, min_prob, seed):
    logits, mask = case
    log_probs = masked_log_probs(logits, mask, min_prob)
    assert log_probs.dtype == torch.float32
    assert log_probs.shape == logits.shape
    assert torch.isfinite(log_probs[mask]).all()
    assert (log_probs[~mask] == float("-inf")).all()
    actions = sample_actions(log_probs, torch.Generator().manual_seed(seed))
    assert actions.dtype == torch.int64 and actions.shape == logits.shape[:-1]
    assert mask.gather(-1, actions.unsqueeze(-1)).all()
    assert torch.isfinite(log_prob_of(log_probs, actions)).all()
    assert mask.gather(-1, greedy_actions(log_probs).unsqueeze(-1)).all()


@FAST
@given(masked_logits(), min_probs)
def test_entropy_is_in_unit_interval(case, min_prob):
    logits, mask = case
    entropy = MaskedCategorical(logits, mask, min_prob).entropy()
    assert entropy.dtype == torch.float32 and entropy.shape == logits.shape[:-1]
    assert ((entropy >= 0.0) & (entropy <= 1.0)).all()
    single = mask.sum(-1) == 1
    assert (entropy[single] == 0.0).all()


@FAST
@given(masked_logits(one_hot=True), min_probs)
def test_single_valid_action_has_exact_zero_log_prob_and_entropy(case, min_prob):
    logits, mask = case
    dist = MaskedCategorical(logits, mask, min_prob)
    actions = dist.sample()
    assert mask.gather(-1, actions.unsqueeze(-1)).all()
    assert (dist.log_prob(actions) == 0.0).all()
    assert (dist.entropy() == 0.0).all()
    assert torch.equal(dist.mode, actions)


@FAST
@given(masked_logits(), st.sampled_from([1e-6, 0.01, 0.05, 0.2, 0.5, 0.99]))
def test_mix_floor_holds_for_every_valid_action_and_probs_sum_to_one(case, min_prob):
    logits, mask = case
    probs = MaskedCategorical(logits, mask, min_prob, floor_mode="mix").probs  # [..., n]
    num_valid = mask.sum(-1, keepdim=True).double()
    floor = torch.clamp(0.99 / num_valid, max=min_prob)  # float64 threshold
    floor = torch.where(num_valid > 1, floor, 1.0)  # one valid action: probability 1
    assert (probs.double() >= floor)[mask].all()
    assert (probs[~mask] == 0.0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(logits.shape[:-1]), atol=2e-6, rtol=0)


@FAST
@given(masked_logits(), st.sampled_from([1e-6, 0.01, 0.05, 0.2, 0.5, 0.99]))
def test_clip_floor_raises_actions_below_it_and_scales_the_rest(case, min_prob):
    """The reference network's floor: p' = floor where p < floor, else p scaled to fill
    the remaining mass; nothing moves when no valid action is below the floor."""
    logits, mask = case
    probs = MaskedCategorical(logits, mask, min_prob).probs.double()  # [..., n], clip default
    plain = MaskedCategorical(logits, mask).probs.double()
    num_valid = mask.sum(-1, keepdim=True).double()
    floor = torch.clamp(0.99 / num_valid, max=min_prob)
    under = mask & (plain < floor)
    num_under = under.sum(-1, keepdim=True).double()
    over_mass = plain.masked_fill(under | ~mask, 0.0).sum(-1, keepdim=True)
    expected = torch.where(under, floor, plain * (1 - num_under * floor) / over_mass)
    expected = expected.masked_fill(~mask, 0.0)
    torch.testing.assert_close(probs, expected, atol=2e-6, rtol=1e-5)
    untouched = ~under.any(-1)  # rows with nothing below the floor: unchanged
    torch.testing.assert_close(probs[untouched], plain[untouched], atol=1e-6, rtol=1e-5)
    assert (probs[~mask] == 0.0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(logits.shape[:-1], dtype=torch.float64), atol=2e-6, rtol=0)


def test_clip_floor_is_a_no_op_above_the_floor_and_mix_is_not():
    # The example: p = [0.7, 0.3], floor 0.1.
    logits = torch.log(torch.tensor([[0.7, 0.3]]))
    clipped = masked_log_probs(logits, None, min_prob=0.1).exp()
    mixed = masked_log_probs(logits, None, min_prob=0.1, floor_mode="mix").exp()
    torch.testing.assert_close(clipped, torch.tensor([[0.7, 0.3]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed, torch.tensor([[0.66, 0.34]]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="floor_mode must be one of"):
        masked_log_probs(logits, None, min_prob=0.1, floor_mode="renormalise")


@settings(deadline=None, max_examples=15)
@given(masked_logits(), min_probs, st.integers(0, 2**31 - 1))
def test_masked_actions_never_sampled_in_many_draws(case, min_prob, seed):
    logits, mask = case
    log_probs = masked_log_probs(logits, mask, min_prob)
    draws = 2000
    many = log_probs.expand(draws, *log_probs.shape)  # [draws, ..., n]
    actions = sample_actions(many, torch.Generator().manual_seed(seed))  # [draws, ...]
    chosen_valid = mask.expand(draws, *mask.shape).gather(-1, actions.unsqueeze(-1))
    assert chosen_valid.all()


# ---------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------


def test_non_bool_mask_rejected_naming_dtype():
    with pytest.raises(ValueError, match=r"mask for slot_logits .*torch\.bool.*torch\.int64"):
        check_logits_and_mask(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.int64), "slot_logits")
    with pytest.raises(ValueError, match=r"torch\.bool"):
        masked_log_probs(torch.zeros(2, 3), torch.ones(2, 3))


def test_wrong_mask_shape_rejected_naming_both_shapes():
    with pytest.raises(ValueError, match=r"op_logits.*\(2, 3\).*\(2, 1\)"):
        check_logits_and_mask(torch.zeros(2, 3), torch.ones(2, 1, dtype=torch.bool), "op_logits")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        MaskedCategorical(torch.zeros(2, 3), torch.ones(3, dtype=torch.bool))


def test_non_float_logits_rejected():
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor.*int64"):
        MaskedCategorical(torch.zeros(2, 3, dtype=torch.int64))


def test_metadata_checks_run_with_validation_off():
    with validation(False), pytest.raises(ValueError, match=r"torch\.bool"):
        MaskedCategorical(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.uint8))


def test_nan_and_inf_counts_reported():
    logits = torch.zeros(2, 4)
    logits[0, 0] = float("nan")
    logits[1, 1] = float("nan")
    logits[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"blueprint_logits.*2 NaN and 1 inf"):
        check_logits_and_mask(logits, None, "blueprint_logits")
    only_inf = torch.zeros(3, 2)
    only_inf[:, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"0 NaN and 3 inf"):
        MaskedCategorical(only_inf)


def test_empty_mask_rows_raise_invalid_state_machine_error_with_count():
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, 2] = False
    with pytest.raises(InvalidStateMachineError, match=r"style_logits: 2 row\(s\)"):
        check_logits_and_mask(torch.zeros(2, 3, 4), mask, "style_logits")
    with pytest.raises(InvalidStateMachineError, match=r"2 row\(s\)"):
        MaskedCategorical(torch.zeros(2, 3, 4), mask)
    assert issubclass(InvalidStateMachineError, RuntimeError)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.1"])
def test_bad_min_prob_rejected(bad):
    with pytest.raises(ValueError, match="min_prob"):
        masked_log_probs(torch.zeros(2, 3), None, bad)


def test_log_prob_of_rejects_bad_actions():
    log_probs = masked_log_probs(torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match=r"actions has dtype torch\.int32, expected torch\.int64"):
        log_prob_of(log_probs, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"actions has shape \(2, 1\), expected \(2,\)"):
        log_prob_of(log_probs, torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\), got 1 out-of-range"):
        log_prob_of(log_probs, torch.tensor([0, 3]))


# ---------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------


def test_validation_off_empty_row_gives_no_error_and_no_nan(monkeypatch):
    logits = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [False, False, True, False]])
    for switch in ("global", "class"):
        if switch == "global":
            with validation(False):
                dist = MaskedCategorical(logits, mask, min_prob=0.1)
        else:
            monkeypatch.setattr(MaskedCategorical, "validate", False)
            dist = MaskedCategorical(logits, mask, min_prob=0.1)
        assert not torch.isnan(dist.log_probs).any()
        # The empty row falls back to action 0 as its only valid action.
        assert dist.log_probs[1].tolist() == [0.0] + [float("-inf")] * 3
        entropy = dist.entropy()
        assert entropy[1] == 0.0 and entropy[2] == 0.0
        actions = dist.sample()
        assert actions[1] == 0 and dist.log_prob(actions)[1] == 0.0
        assert mask[0, actions[0]] and actions[2] == 2
        loss = dist.log_prob(torch.tensor([0, 0, 2])).sum() + entropy.sum()
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()
        assert (grad[1] == 0).all()


def test_logits_near_masked_value_still_give_correct_probabilities():
    # Valid logits at and below the -1e4 fill, a masked logit far above them.
    logits = torch.tensor([[-1e4, -1e4 - 1.0, 3.0, -3e4]])
    mask = torch.tensor([[True, True, False, True]])
    probs = MaskedCategorical(logits, mask).probs[0]
    expected = torch.softmax(torch.tensor([0.0, -1.0, -2e4]), dim=0)
    torch.testing.assert_close(probs[[0, 1, 3]], expected)
    assert probs[2] == 0.0
    # Only valid entries below the fill: still a proper distribution over them.
    low = torch.tensor([[-5e4, -5e4 + 2.0, 0.0]])
    low_probs = masked_log_probs(low, torch.tensor([[True, True, False]])).exp()[0]
    torch.testing.assert_close(low_probs[:2], torch.softmax(torch.tensor([0.0, 2.0]), dim=0))


def test_mask_logits_fills_masked_value_in_logits_dtype():
    mask = torch.tensor([[True, False, True]])
    for dtype in DTYPES:
        out = mask_logits(torch.ones(1, 3, dtype=dtype), mask)
        assert out.dtype == dtype
        # Finite in every dtype (bf16 rounds it to -9984).
        assert out[0, 1] == torch.tensor(MASKED_LOGIT_VALUE, dtype=dtype)
        assert torch.isfinite(out).all()
        assert out[0, 0].item() == 1.0 and out[0, 2].item() == 1.0
    logits = torch.ones(2, 3)
    assert mask_logits(logits, None) is logits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("min_prob", [None, 0.05])
def test_low_precision_logits_match_their_fp32_upcast(dtype, min_prob):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 5, 7, generator=gen) * 5).to(dtype)
    mask = torch.rand(4, 5, 7, generator=gen) < 0.6
    mask[..., 0] = True
    low = MaskedCategorical(logits, mask, min_prob)
    high = MaskedCategorical(logits.float(), mask, min_prob)
    assert low.log_probs.dtype == torch.float32
    assert torch.equal(low.log_probs, high.log_probs)
    assert torch.equal(low.entropy(), high.entropy())


@pytest.mark.parametrize("min_prob", [None, 0.02])
def test_gradients_flow_to_valid_logits_only(min_prob):
    logits = torch.randn(3, 2, 5, requires_grad=True)
    mask = torch.ones(3, 2, 5, dtype=torch.bool)
    mask[0, 0, 1:] = False  # a single valid action
    mask[1, :, 3] = False
    dist = MaskedCategorical(logits, mask, min_prob)
    actions = dist.sample(torch.Generator().manual_seed(1))
    loss = dist.log_prob(actions).sum() + dist.entropy().sum()
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()
    assert (grad[0, 0] == 0).all()  # single valid action: constant log-prob and entropy
    assert grad[1:].abs().sum() > 0


def test_gradient_matches_plain_log_softmax_without_floor():
    logits = torch.randn(4, 6, dtype=torch.float64).float().requires_grad_()
    weights = torch.randn(4, 6)
    (ours,) = torch.autograd.grad((masked_log_probs(logits, None) * weights).sum(), logits)
    (ref,) = torch.autograd.grad((torch.log_softmax(logits, -1) * weights).sum(), logits)
    torch.testing.assert_close(ours, ref)


def test_floor_lifts_dominated_action_and_keeps_ordering():
    logits = torch.tensor([[0.0, 6.0, 4.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    unfloored = torch.softmax(logits[0, :3], dim=0)
    probs = masked_log_probs(logits, mask, min_prob=0.1, floor_mode="mix").exp()[0]
    assert probs[0] >= 0.1 and probs[2] >= 0.1 and probs[3] == 0.0
    assert probs[0] < probs[2] < probs[1]
    # p' = f + (1 - k f) p, k = 3 valid actions.
    torch.testing.assert_close(probs[:3], 0.1 + 0.7 * unfloored, atol=1e-4, rtol=0)
    # The cap 0.99 / k applies when f is larger than a uniform share.
    capped = masked_log_probs(logits, mask, min_prob=0.9, floor_mode="mix").exp()[0]
    assert (capped[:3] >= 0.33).all()


def test_no_mask_matches_log_softmax_and_entropy_of_uniform_is_one():
    logits = torch.randn(2, 3, 6)
    torch.testing.assert_close(masked_log_probs(logits, None), torch.log_softmax(logits, -1))
    uniform = masked_log_probs(torch.zeros(2, 6), None)
    torch.testing.assert_close(normalised_entropy(uniform, None), torch.ones(2))
    mask = torch.tensor([[True, True, False, False, False, False]] * 2)
    half = masked_log_probs(torch.zeros(2, 6), mask)
    torch.testing.assert_close(normalised_entropy(half, mask), torch.ones(2))
    torch.testing.assert_close(normalised_entropy(half, None), torch.ones(2))


def test_seeded_sampling_is_deterministic_and_matches_probabilities():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    log_probs = probs.log().expand(20000, 4)
    first = sample_actions(log_probs, torch.Generator().manual_seed(123))
    second = sample_actions(log_probs, torch.Generator().manual_seed(123))
    assert torch.equal(first, second)
    assert not torch.equal(first, sample_actions(log_probs, torch.Generator().manual_seed(7)))
    frequencies = torch.bincount(first, minlength=4).float() / first.numel()
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)
    assert frequencies[1] == 0.0


def test_greedy_and_mode_pick_most_probable_valid_action():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    dist = MaskedCategorical(logits, mask)
    assert dist.mode.tolist() == [2, 2]
    assert greedy_actions(dist.log_probs).dtype == torch.int64


def test_compiles_fullgraph_without_host_sync():
    def step(logits, mask):
        log_probs = masked_log_probs(logits, mask, min_prob=0.01)
        actions = sample_actions(log_probs)
        entropy = normalised_entropy(log_probs, mask)
        dist = MaskedCategorical(logits, mask)
        return actions, log_prob_of(log_probs, actions), entropy, dist.entropy(), dist.mode

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    logits = torch.randn(3, 2, 5, dtype=torch.float16)
    mask = torch.rand(3, 2, 5) < 0.5
    mask[..., 4] = True
    mask[0, 0] = torch.tensor([False, True, False, False, False])
    actions, log_prob, entropy, dist_entropy, mode = compiled(logits, mask)
    assert mask.gather(-1, actions.unsqueeze(-1)).all()
    assert torch.isfinite(log_prob).all() and log_prob[0, 0] == 0.0
    assert ((entropy >= 0) & (entropy <= 1)).all() and entropy[0, 0] == 0.0
    torch.testing.assert_close(
        entropy, normalised_entropy(masked_log_probs(logits, mask, 0.01), mask)
    )
    torch.testing.assert_close(dist_entropy, MaskedCategorical(logits, mask).entropy())
    assert torch.equal(mode, MaskedCategorical(logits, mask).mode)
