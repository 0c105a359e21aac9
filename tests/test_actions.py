"""The factored action space: enums, head specs, and the canonicalisation table of DESIGN.md."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slotformer.actions import (
    ActionSpace,
    HeadSpec,
    canonicalize_masks,
)
from slotformer.policy_step import first_valid_index, select_slot_mask_for_op
from slotformer.presets.seed_lifecycle import (
    HEAD_NAMES,
    NUM_BLUEPRINTS,
    NUM_OPS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlueprintAction,
    Op,
    Style,
    Tempo,
)

ALL_OPS = tuple(range(6))

# Leading shapes with every op present: [B] (masks [B, n]) and [B, T] (masks [B, T, n]).
LEADING_SHAPES = [(6,), (2, 6)]
LEADING_IDS = ["B_n", "B_T_n"]


def _ops_for(leading: tuple[int, ...]) -> torch.Tensor:
    """Every op 0..5 along the last leading dim, repeated over the others."""
    return torch.arange(6).expand(*leading).clone()  # [...]


def _random_masks(
    space: ActionSpace, leading: tuple[int, ...], seed: int = 0
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        h.name: torch.rand(*leading, h.size, generator=generator) > 0.5 for h in space.heads
    }


def _check_table_row(
    head: str,
    relevant_ops: set[int],
    canonical: int | None,
    leading: tuple[int, ...],
    num_slots: int = 3,
) -> None:
    """One row of the DESIGN.md table, checked for every op on random masks.

    ``canonical=None`` means "first valid index of the head's own mask".
    """
    space = ActionSpace.default(num_slots)
    masks = _random_masks(space, leading)
    ops = _ops_for(leading)
    out = canonicalize_masks(space, masks, ops)[head]
    mask = masks[head]
    assert out.dtype == torch.bool
    assert out.shape == mask.shape
    for index in torch.cartesian_prod(*[torch.arange(s) for s in leading]).reshape(-1, len(leading)):
        position = tuple(index.tolist())
        op = int(ops[position])
        row, original = out[position], mask[position]
        if op in relevant_ops:
            assert torch.equal(row, original), f"{head}: op {Op(op).name} must keep the mask"
        else:
            expected = canonical
            if expected is None:
                expected = int(original.nonzero()[0]) if bool(original.any()) else 0
            assert row.nonzero().flatten().tolist() == [expected], (
                f"{head}: op {Op(op).name} must force action {expected}, got {row.tolist()}"
            )


# --------------------------------------------------------------------------- enums and defaults


def test_enum_values_named_in_design() -> None:
    assert [(o.name, o.value) for o in Op] == [
        ("WAIT", 0),
        ("GERMINATE", 1),
        ("SET_ALPHA_TARGET", 2),
        ("PRUNE", 3),
        ("FOSSILIZE", 4),
        ("ADVANCE", 5),
    ]
    assert BlueprintAction.NOOP == 0
    assert Style.SIGMOID_ADD == 2
    assert Tempo.STANDARD == 1
    assert AlphaTarget.FULL == 2
    assert AlphaSpeed.INSTANT == 0
    assert AlphaCurve.LINEAR == 0
    assert (len(BlueprintAction), len(Style), len(Tempo)) == (13, 4, 3)
    assert (len(AlphaTarget), len(AlphaSpeed), len(AlphaCurve), len(Op)) == (3, 4, 5, 6)
    assert (NUM_OPS, NUM_BLUEPRINTS) == (6, 13)


@pytest.mark.parametrize("num_slots", [1, 3, 9, 25])
def test_default_head_order_and_sizes(num_slots: int) -> None:
    space = ActionSpace.default(num_slots)
    expected = [
        ("slot", num_slots),
        ("blueprint", 13),
        ("style", 4),
        ("tempo", 3),
        ("alpha_target", 3),
        ("alpha_speed", 4),
        ("alpha_curve", 5),
        ("op", 6),
    ]
    assert [(h.name, h.size) for h in space.heads] == expected
    assert space.head_names == HEAD_NAMES == tuple(name for name, _ in expected)
    assert space.sizes == dict(expected)
    assert list(space.sizes) == list(HEAD_NAMES)  # dict order is the head order too
    assert space.op_head == "op" and space.pointer_head == "slot"
    assert space.num_ops == 6 and space.num_slots == num_slots
    assert ActionSpace.default().num_slots == 3


def test_default_canonical_actions_are_plain_ints() -> None:
    # Regression: IntEnum canonical actions made `arange == Style.SIGMOID_ADD` untraceable
    # under torch.compile(fullgraph=True).
    for head in ActionSpace.default().heads:
        assert head.canonical_action is None or type(head.canonical_action) is int


def test_head_lookup() -> None:
    space = ActionSpace.default(3)
    assert space.head("tempo") == HeadSpec("tempo", 3, frozenset({1}), 1)
    with pytest.raises(KeyError, match=re.escape("unknown head 'colour'; heads are ['slot',")):
        space.head("colour")


def test_with_num_slots_resizes_only_the_pointer_head() -> None:
    space = ActionSpace.default(3)
    bigger = space.with_num_slots(7)
    assert bigger.sizes["slot"] == 7 and bigger.num_slots == 7
    assert bigger.head_names == space.head_names
    assert [h for h in bigger.heads if h.name != "slot"] == [h for h in space.heads if h.name != "slot"]
    assert bigger.head("slot").relevant_ops == space.head("slot").relevant_ops
    assert bigger == ActionSpace.default(7)
    assert space.num_slots == 3  # the original is untouched
    assert space.with_num_slots(3) == space
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        space.with_num_slots(0)


# --------------------------------------------------------------------------- validation errors


def test_action_space_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match=re.escape("head names must be unique, got ['op', 'x', 'x']")):
        ActionSpace((HeadSpec("op", 2), HeadSpec("x", 2), HeadSpec("x", 3)), pointer_head=None)


def test_action_space_rejects_unknown_op_head() -> None:
    with pytest.raises(ValueError, match=re.escape("op_head='verb' is not one of the heads ['op', 'x']")):
        ActionSpace((HeadSpec("op", 2), HeadSpec("x", 2)), op_head="verb", pointer_head=None)


def test_action_space_rejects_unknown_pointer_head() -> None:
    with pytest.raises(ValueError, match=re.escape("pointer_head='slot' is not one of the heads ['op', 'x']")):
        ActionSpace((HeadSpec("op", 2), HeadSpec("x", 2)))


@pytest.mark.parametrize("bad_op", [6, -1])
def test_action_space_rejects_relevant_ops_out_of_range(bad_op: int) -> None:
    heads = (HeadSpec("op", 6), HeadSpec("x", 2, frozenset({1, bad_op}), 0))
    with pytest.raises(ValueError, match=re.escape(f"head 'x': relevant_ops [{bad_op}] are outside the op head's range [0, 6)")):
        ActionSpace(heads, pointer_head=None)


def test_action_space_rejects_op_head_with_relevance() -> None:
    with pytest.raises(ValueError, match="the op head 'op' must be relevant for every op"):
        ActionSpace((HeadSpec("op", 3, frozenset({0}), 0),), pointer_head=None)


@pytest.mark.parametrize("bad_action", [3, -1])
def test_head_spec_rejects_canonical_action_out_of_range(bad_action: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"head 'x': canonical_action={bad_action} is outside [0, 3)")):
        HeadSpec("x", 3, frozenset({1}), bad_action)


def test_head_spec_rejects_bad_name_and_size() -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        HeadSpec("", 3)
    with pytest.raises(ValueError, match="head 'x': size must be >= 1, got 0"):
        HeadSpec("x", 0)


def test_head_spec_normalises_relevant_ops_to_frozenset_of_int() -> None:
    head = HeadSpec("x", 2, {Op.GERMINATE, 3}, Style.LINEAR_MULTIPLY)  # type: ignore[arg-type]
    assert head.relevant_ops == frozenset({1, 3})
    assert all(type(o) is int for o in head.relevant_ops)
    assert type(head.canonical_action) is int and head.canonical_action == 1


# --------------------------------------------------------------------------- helpers


def test_first_valid_index() -> None:
    mask = torch.tensor(
        [[False, False, True], [True, True, True], [False, True, True], [False, False, False]]
    )
    assert first_valid_index(mask).tolist() == [2, 0, 1, 0]  # all-False row -> 0
    assert first_valid_index(mask.reshape(2, 2, 3)).shape == (2, 2)


def test_select_slot_mask_for_op() -> None:
    slot_by_op = torch.zeros(2, 6, 4, dtype=torch.bool)  # [B, num_ops, N]
    for op in range(6):
        slot_by_op[:, op, op % 4] = True
    ops = torch.tensor([1, 5])
    selected = select_slot_mask_for_op(slot_by_op, ops)
    assert selected.shape == (2, 4)
    assert selected.tolist() == [[False, True, False, False], [False, True, False, False]]
    ops_bt = torch.tensor([[0, 2, 3]])  # [B, T]
    selected_bt = select_slot_mask_for_op(slot_by_op[:1, None].expand(1, 3, 6, 4), ops_bt)
    assert selected_bt.shape == (1, 3, 4)
    assert [int(r.nonzero()) for r in selected_bt[0]] == [0, 2, 3]


# --------------------------------------------------------------------------- the table, row by row


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_slot_relevant_for_all_but_wait_else_first_valid(leading: tuple[int, ...]) -> None:
    _check_table_row("slot", {1, 2, 3, 4, 5}, None, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
@pytest.mark.parametrize("num_slots", [3, 7])
def test_row_slot_canonical_is_first_valid_not_zero(
    leading: tuple[int, ...], num_slots: int
) -> None:
    space = ActionSpace.default(num_slots)
    masks = {h.name: torch.ones(*leading, h.size, dtype=torch.bool) for h in space.heads}
    masks["slot"] = torch.zeros(*leading, num_slots, dtype=torch.bool)
    masks["slot"][..., -1] = True  # only the last slot is valid
    ops = _ops_for(leading)
    out = canonicalize_masks(space, masks, ops)["slot"]
    wait = ops == Op.WAIT
    assert first_valid_index(out[wait]).tolist() == [num_slots - 1] * int(wait.sum())
    assert torch.equal(out, masks["slot"])  # one-hot at N-1 is the mask itself here
    _check_table_row("slot", {1, 2, 3, 4, 5}, None, leading, num_slots=num_slots)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_blueprint_relevant_for_germinate_else_noop(leading: tuple[int, ...]) -> None:
    _check_table_row("blueprint", {Op.GERMINATE}, 0, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_style_relevant_for_germinate_and_set_alpha_else_sigmoid_add(
    leading: tuple[int, ...],
) -> None:
    _check_table_row("style", {Op.GERMINATE, Op.SET_ALPHA_TARGET}, 2, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_tempo_relevant_for_germinate_else_standard(leading: tuple[int, ...]) -> None:
    _check_table_row("tempo", {Op.GERMINATE}, 1, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_alpha_target_relevant_for_germinate_and_set_alpha_else_full(
    leading: tuple[int, ...],
) -> None:
    _check_table_row("alpha_target", {Op.GERMINATE, Op.SET_ALPHA_TARGET}, 2, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_alpha_speed_relevant_for_set_alpha_and_prune_else_instant(
    leading: tuple[int, ...],
) -> None:
    _check_table_row("alpha_speed", {Op.SET_ALPHA_TARGET, Op.PRUNE}, 0, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_row_alpha_curve_relevant_for_set_alpha_and_prune_else_linear(
    leading: tuple[int, ...],
) -> None:
    _check_table_row("alpha_curve", {Op.SET_ALPHA_TARGET, Op.PRUNE}, 0, leading)


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_op_mask_passes_through_unchanged(leading: tuple[int, ...]) -> None:
    space = ActionSpace.default(3)
    masks = _random_masks(space, leading, seed=3)
    out = canonicalize_masks(space, masks, _ops_for(leading))
    assert torch.equal(out["op"], masks["op"])
    assert set(out) == set(HEAD_NAMES)


def test_canonical_action_is_forced_even_when_masked_invalid() -> None:
    # The one-hot row does not depend on the input mask: the forced action has log-prob 0.
    space = ActionSpace.default(3)
    masks = {h.name: torch.ones(1, h.size, dtype=torch.bool) for h in space.heads}
    masks["blueprint"][0, 0] = False
    out = canonicalize_masks(space, masks, torch.tensor([Op.WAIT]))
    assert out["blueprint"][0].nonzero().flatten().tolist() == [0]


def test_canonicalize_does_not_mutate_inputs() -> None:
    space = ActionSpace.default(3)
    masks = _random_masks(space, (2, 6), seed=5)
    before = {k: v.clone() for k, v in masks.items()}
    canonicalize_masks(space, masks, _ops_for((2, 6)))
    assert all(torch.equal(masks[k], before[k]) for k in masks)


# --------------------------------------------------------------------------- slot_by_op


@pytest.mark.parametrize("leading", LEADING_SHAPES, ids=LEADING_IDS)
def test_slot_by_op_replaces_slot_mask_for_relevant_ops(leading: tuple[int, ...]) -> None:
    num_slots = 4
    space = ActionSpace.default(num_slots)
    masks = {h.name: torch.ones(*leading, h.size, dtype=torch.bool) for h in space.heads}
    masks["slot"] = torch.zeros(*leading, num_slots, dtype=torch.bool)
    masks["slot"][..., 2:] = True  # base mask: first valid index 2
    slot_by_op = torch.zeros(*leading, 6, num_slots, dtype=torch.bool)  # [..., num_ops, N]
    slot_by_op[..., Op.WAIT, 0] = True  # must NOT be used for WAIT
    slot_by_op[..., Op.GERMINATE, :2] = True
    slot_by_op[..., Op.SET_ALPHA_TARGET, 3] = True
    slot_by_op[..., Op.PRUNE, 1:] = True
    slot_by_op[..., Op.FOSSILIZE, 1] = True
    slot_by_op[..., Op.ADVANCE, :] = True
    ops = _ops_for(leading)
    out = canonicalize_masks(space, masks, ops, slot_by_op=slot_by_op)
    slot = out["slot"]
    assert slot.shape == (*leading, num_slots)
    expected_rows = {
        Op.WAIT: [False, False, True, False],  # one-hot on the base mask's first valid (2)
        Op.GERMINATE: [True, True, False, False],
        Op.SET_ALPHA_TARGET: [False, False, False, True],
        Op.PRUNE: [False, True, True, True],
        Op.FOSSILIZE: [False, True, False, False],
        Op.ADVANCE: [True, True, True, True],
    }
    flat_slot, flat_ops = slot.reshape(-1, num_slots), ops.reshape(-1)
    for row, op in zip(flat_slot, flat_ops.tolist()):
        assert row.tolist() == expected_rows[Op(op)], Op(op).name
    # The other heads are unaffected by slot_by_op.
    without = canonicalize_masks(space, masks, ops)
    for name in HEAD_NAMES[1:]:
        assert torch.equal(out[name], without[name])


def test_slot_by_op_shape_and_dtype_are_checked() -> None:
    # Regression: a transposed [B, N, num_ops] tensor used to gather wrong rows silently.
    space = ActionSpace.default(3)
    masks = {h.name: torch.ones(2, h.size, dtype=torch.bool) for h in space.heads}
    ops = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=re.escape("slot_by_op has shape (2, 3, 6), expected (2, 6, 3) (ops shape + (num_ops, N))")):
        canonicalize_masks(space, masks, ops, slot_by_op=torch.ones(2, 3, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("dtype torch.float32, expected torch.bool")):
        canonicalize_masks(space, masks, ops, slot_by_op=torch.ones(2, 6, 3))
    no_pointer = ActionSpace((HeadSpec("op", 2),), pointer_head=None)
    with pytest.raises(ValueError, match="slot_by_op was given but the action space has no pointer head"):
        canonicalize_masks(
            no_pointer, {"op": torch.ones(2, 2, dtype=torch.bool)}, ops % 2,
            slot_by_op=torch.ones(2, 2, 1, dtype=torch.bool),
        )


# --------------------------------------------------------------------------- input errors


def test_missing_head_is_a_key_error_listing_names() -> None:
    space = ActionSpace.default(3)
    masks = {h.name: torch.ones(2, h.size, dtype=torch.bool) for h in space.heads}
    del masks["tempo"], masks["op"]
    with pytest.raises(KeyError) as info:
        canonicalize_masks(space, masks, torch.tensor([0, 1]))
    message = str(info.value)
    assert "['tempo', 'op']" in message
    assert "['slot', 'blueprint', 'style', 'tempo', 'alpha_target', 'alpha_speed', 'alpha_curve', 'op']" in message


def test_wrong_mask_shape_is_a_value_error_stating_shapes() -> None:
    space = ActionSpace.default(3)
    masks = {h.name: torch.ones(2, 5, h.size, dtype=torch.bool) for h in space.heads}
    ops = torch.zeros(2, 5, dtype=torch.long)
    wrong_size = dict(masks, style=torch.ones(2, 5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("mask for head 'style' has shape (2, 5, 3), expected (2, 5, 4) (ops shape + head size)")):
        canonicalize_masks(space, wrong_size, ops)
    wrong_leading = dict(masks, slot=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("mask for head 'slot' has shape (2, 3), expected (2, 5, 3)")):
        canonicalize_masks(space, wrong_leading, ops)


def test_non_bool_mask_and_non_int64_ops_are_rejected() -> None:
    # Regression: a float mask was silently promoted by torch.where instead of raising.
    space = ActionSpace.default(3)
    masks = {h.name: torch.ones(2, h.size, dtype=torch.bool) for h in space.heads}
    with pytest.raises(ValueError, match=re.escape("mask for head 'blueprint' has dtype torch.float32, expected torch.bool")):
        canonicalize_masks(space, dict(masks, blueprint=torch.ones(2, 13)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=re.escape("ops has dtype torch.float32, expected torch.int64")):
        canonicalize_masks(space, masks, torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------- custom action spaces


def test_custom_action_space_with_own_pointer_and_op_heads() -> None:
    space = ActionSpace(
        heads=(
            HeadSpec("verb", 3),  # op head: 0 idle, 1 paint, 2 move
            HeadSpec("colour", 4, frozenset({1}), 3),
            HeadSpec("target", 5, frozenset({1, 2}), None),  # pointer
            HeadSpec("speed", 2, frozenset({0, 2}), 1),
            HeadSpec("note", 3),  # relevant for every op
        ),
        op_head="verb",
        pointer_head="target",
    )
    assert space.num_ops == 3 and space.num_slots == 5
    assert space.head_names == ("verb", "colour", "target", "speed", "note")
    masks = {h.name: torch.ones(3, h.size, dtype=torch.bool) for h in space.heads}
    masks["target"] = torch.tensor([[False, False, False, True, True]] * 3)
    masks["note"] = torch.tensor([[True, False, True]] * 3)
    ops = torch.tensor([0, 1, 2])
    out = canonicalize_masks(space, masks, ops)
    assert out["colour"].tolist() == [[False, False, False, True], [True] * 4, [False, False, False, True]]
    assert out["target"].tolist() == [[False, False, False, True, False]] + [[False, False, False, True, True]] * 2
    assert out["speed"].tolist() == [[True, True], [False, True], [True, True]]
    assert torch.equal(out["note"], masks["note"])
    assert torch.equal(out["verb"], masks["verb"])

    slot_by_op = torch.zeros(3, 3, 5, dtype=torch.bool)
    slot_by_op[:, 1, 0] = True
    slot_by_op[:, 2, 4] = True
    out = canonicalize_masks(space, masks, ops, slot_by_op=slot_by_op)
    assert [int(r.nonzero()) for r in out["target"]] == [3, 0, 4]

    resized = space.with_num_slots(8)
    assert resized.sizes == {"verb": 3, "colour": 4, "target": 8, "speed": 2, "note": 3}


def test_custom_action_space_without_pointer_head() -> None:
    space = ActionSpace(
        heads=(HeadSpec("act", 2), HeadSpec("arg", 3, frozenset({1}), 0)),
        op_head="act",
        pointer_head=None,
    )
    assert space.num_slots is None
    masks = {"act": torch.ones(2, 2, 2, dtype=torch.bool), "arg": torch.ones(2, 2, 3, dtype=torch.bool)}
    ops = torch.tensor([[0, 1], [1, 0]])
    out = canonicalize_masks(space, masks, ops)
    assert out["arg"].tolist() == [
        [[True, False, False], [True, True, True]],
        [[True, True, True], [True, False, False]],
    ]
    with pytest.raises(ValueError, match="no pointer head to resize"):
        space.with_num_slots(4)


# --------------------------------------------------------------------------- properties and compile


def _reference_canonical(
    space: ActionSpace, masks: dict[str, torch.Tensor], ops: torch.Tensor
) -> dict[str, list[list[bool]]]:
    """Row-by-row Python reading of the table (no tensor ops), for [B, n] masks."""
    out: dict[str, list[list[bool]]] = {}
    for head in space.heads:
        rows = []
        for b, op in enumerate(ops.tolist()):
            row = masks[head.name][b].tolist()
            if head.relevant_ops is None or op in head.relevant_ops:
                rows.append(row)
                continue
            forced = head.canonical_action
            if forced is None:
                forced = row.index(True) if True in row else 0
            rows.append([i == forced for i in range(head.size)])
        out[head.name] = rows
    return out


@settings(deadline=None, max_examples=40)
@given(
    num_slots=st.integers(1, 9),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_canonicalize_matches_reference_and_is_idempotent(
    num_slots: int, batch: int, seed: int
) -> None:
    space = ActionSpace.default(num_slots)
    generator = torch.Generator().manual_seed(seed)
    masks = {h.name: torch.rand(batch, h.size, generator=generator) > 0.5 for h in space.heads}
    ops = torch.randint(0, 6, (batch,), generator=generator)
    out = canonicalize_masks(space, masks, ops)
    reference = _reference_canonical(space, masks, ops)
    assert {k: v.tolist() for k, v in out.items()} == reference
    again = canonicalize_masks(space, out, ops)
    assert all(torch.equal(again[k], out[k]) for k in out)
    # Every irrelevant head has exactly one valid action (log-prob 0, entropy 0).
    for head in space.heads:
        if head.relevant_ops is None:
            continue
        irrelevant = ~torch.isin(ops, torch.tensor(sorted(head.relevant_ops)))
        assert bool((out[head.name][irrelevant].sum(-1) == 1).all())


def test_canonicalize_under_fullgraph_compile_matches_eager() -> None:
    # Regression: this used to fail on Python 3.11 (cached_property lock in head_names) and on
    # IntEnum canonical actions.
    space = ActionSpace.default(4)
    leading = (3, 2)
    generator = torch.Generator().manual_seed(11)
    masks = {h.name: torch.rand(*leading, h.size, generator=generator) > 0.4 for h in space.heads}
    ops = torch.randint(0, 6, leading, generator=generator)
    slot_by_op = torch.rand(*leading, 6, 4, generator=generator) > 0.5

    def run(
        masks: dict[str, torch.Tensor], ops: torch.Tensor, slot_by_op: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return canonicalize_masks(space, masks, ops, slot_by_op)

    # Compiled first, so the space's properties are first read inside the trace.
    compiled = torch.compile(run, fullgraph=True, backend="eager")
    got = compiled(masks, ops, slot_by_op)
    expected = canonicalize_masks(space, masks, ops, slot_by_op)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].dtype == torch.bool
        assert torch.equal(got[name], expected[name]), name


CUSTOM_SPACE = ActionSpace(
    heads=(
        HeadSpec("target", 5, frozenset({1, 2}), None),  # pointer-like: first valid index
        HeadSpec("colour", 7, frozenset({1}), 3),
        HeadSpec("speed", 2, None, None),  # relevant for every op
        HeadSpec("never", 4, frozenset(), 1),  # relevant for no op
        HeadSpec("verb", 3),
    ),
    op_head="verb",
    pointer_head=None,
)


@pytest.mark.parametrize("space", [ActionSpace.default(5), CUSTOM_SPACE], ids=["default", "custom"])
@pytest.mark.parametrize("with_slot_by_op", [False, True])
@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**31 - 1))
def test_canonical_masks_follow_the_rule_head_by_head(
    space: ActionSpace, with_slot_by_op: bool, seed: int
) -> None:
    # The policy step canonicalises every head at once, padded side by side; each head must
    # be exactly DESIGN.md's rule, and the padding never valid.
    from slotformer.policy_step import PackedHeads

    if with_slot_by_op and space.pointer_head is None:
        return
    g = torch.Generator().manual_seed(seed)
    lead = (12,)
    masks = {h.name: torch.rand(*lead, h.size, generator=g) < 0.6 for h in space.heads}
    ops = torch.randint(0, space.num_ops, lead, generator=g)
    slot_by_op = (torch.rand(*lead, space.num_ops, space.num_slots or 1, generator=g) < 0.5
                  if with_slot_by_op else None)
    reference = _reference_canonical(space, masks, ops)
    expected = {name: torch.tensor(rows) for name, rows in reference.items()}
    if slot_by_op is not None:  # the pointer's relevant rows come from slot_by_op[op]
        pointer = space.head(space.pointer_head)
        relevant = torch.tensor([op in pointer.relevant_ops for op in ops.tolist()])
        chosen = slot_by_op[torch.arange(12), ops]
        expected[pointer.name] = torch.where(relevant[:, None], chosen, expected[pointer.name])
    got = canonicalize_masks(space, masks, ops, slot_by_op)
    assert list(got) == list(space.head_names)
    for name in space.head_names:
        assert torch.equal(got[name], expected[name]), name
    packed = PackedHeads.of(space)
    canonical = packed.canonical_masks(packed.pack(masks) & packed.real, ops, slot_by_op)
    for k, (name, n) in enumerate(zip(packed.names, packed.sizes)):
        assert torch.equal(canonical[..., k, :n], expected[name]), name
        assert not canonical[..., k, n:].any(), name


# ---------------------------------------------------------------------------------------
# the seed-lifecycle preset and plain-data round trips
# ---------------------------------------------------------------------------------------

MOVED_NAMES = (
    "HEAD_NAMES", "NUM_BLUEPRINTS", "NUM_OPS", "AlphaCurve", "AlphaSpeed", "AlphaTarget",
    "BlueprintAction", "Op", "Style", "Tempo",
)


def test_the_preset_builds_the_default_space() -> None:
    from slotformer import presets
    from slotformer.presets import seed_lifecycle

    for num_slots in (1, 3, 7):
        space = seed_lifecycle.seed_lifecycle_action_space(num_slots)
        assert space == ActionSpace.default(num_slots)
        assert space.head_names == seed_lifecycle.HEAD_NAMES
        assert space.num_ops == seed_lifecycle.NUM_OPS == len(seed_lifecycle.Op)
        assert space.sizes["blueprint"] == seed_lifecycle.NUM_BLUEPRINTS
    for name in MOVED_NAMES:
        assert getattr(presets, name) is getattr(seed_lifecycle, name)
    assert presets.seed_lifecycle_action_space is seed_lifecycle.seed_lifecycle_action_space


def test_importing_slotformer_and_the_preset_raises_no_deprecation_warning() -> None:
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import slotformer, slotformer.actions, slotformer.presets\n"
        "from slotformer.presets.seed_lifecycle import Op\n"
        "slotformer.create_policy('transformer', lstm_hidden_dim=8, embed_dim=8, head_hidden=8)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "space",
    [ActionSpace.default(3), ActionSpace.default(11), CUSTOM_SPACE],
    ids=["default3", "default11", "custom"],
)
def test_action_space_round_trips_through_plain_data(space: ActionSpace) -> None:
    import json

    data = space.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data only: lists, str, int, None
    rebuilt = ActionSpace.from_dict(data)
    assert rebuilt == space
    assert [type(h.canonical_action) for h in rebuilt.heads] == [
        type(h.canonical_action) for h in space.heads
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("heads"), r"missing \['heads'\]"),
        (lambda d: d.update(extra=1), r"unknown \['extra'\]"),
        (lambda d: d.update(heads=[]), "non-empty list"),
        (lambda d: d["heads"][0].update(size="3"), "'size' must be an int"),
        (lambda d: d["heads"][0].update(size=True), "'size' must be an int"),
        (lambda d: d["heads"][1].update(relevant_ops=[1.5]), "'relevant_ops' must be a list"),
        (lambda d: d["heads"][1].update(canonical_action="NOOP"), "'canonical_action' must be"),
        (lambda d: d["heads"][1].update(colour=1), r"heads\[1\].*unknown \['colour'\]"),
        (lambda d: d.update(op_head="verb"), "op_head='verb' is not one of the heads"),
        (lambda d: d["heads"][1].update(relevant_ops=[9]), r"relevant_ops \[9\] are outside"),
    ],
)
def test_action_space_from_dict_names_what_is_wrong(mutate: object, message: str) -> None:
    data = ActionSpace.default(3).to_dict()
    assert callable(mutate)
    mutate(data)
    with pytest.raises(ValueError, match=message):
        ActionSpace.from_dict(data)
    with pytest.raises(ValueError, match="must be a dict"):
        ActionSpace.from_dict([1, 2])  # type: ignore[arg-type]
