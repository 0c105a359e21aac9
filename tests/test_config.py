"""SlotConfig (slot ids, action indices, grid positions) and ObservationLayout (flat split)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, ObservationLayout, SlotConfig

# --------------------------------------------------------------------------- SlotConfig


def test_slot_config_is_frozen() -> None:
    cfg = SlotConfig.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.slot_ids = ("r0c0",)  # type: ignore[misc]


def test_slot_config_rejects_empty_tuple() -> None:
    with pytest.raises(ValueError, match=re.escape("slot_ids must be a non-empty tuple of str, got tuple: ()")):
        SlotConfig(())


def test_slot_config_rejects_duplicate_ids_and_names_them() -> None:
    with pytest.raises(ValueError, match=re.escape("slot_ids must be unique, duplicated: ['r0c1']")):
        SlotConfig(("r0c0", "r0c1", "r0c1"))


@pytest.mark.parametrize("bad", ["r0c0", None, 3])
def test_slot_config_rejects_non_sequence_slot_ids(bad: object) -> None:
    with pytest.raises(ValueError, match="slot_ids must be a non-empty tuple of str"):
        SlotConfig(bad)  # type: ignore[arg-type]


def test_slot_config_rejects_empty_or_non_str_ids() -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        SlotConfig(("r0c0", ""))
    with pytest.raises(ValueError, match="non-empty strings"):
        SlotConfig(("r0c0", 1))  # type: ignore[arg-type]


def test_slot_config_list_is_stored_as_tuple_and_hashable() -> None:
    cfg = SlotConfig(["r0c0", "r0c1"])  # type: ignore[arg-type]
    assert cfg.slot_ids == ("r0c0", "r0c1")
    assert isinstance(cfg.slot_ids, tuple)
    assert hash(cfg) == hash(SlotConfig(("r0c0", "r0c1")))


def test_default_is_three_slots_in_one_row() -> None:
    cfg = SlotConfig.default()
    assert cfg.slot_ids == ("r0c0", "r0c1", "r0c2")
    assert cfg == SlotConfig(("r0c0", "r0c1", "r0c2"))
    assert cfg.num_slots == 3
    assert cfg.positions == ((0, 0), (0, 1), (0, 2))
    assert (cfg.num_rows, cfg.num_cols) == (1, 3)


def test_for_grid_is_row_major() -> None:
    cfg = SlotConfig.for_grid(2, 3)
    assert cfg.slot_ids == ("r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2")
    assert cfg.num_slots == 6
    assert cfg.positions == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2))
    assert (cfg.num_rows, cfg.num_cols) == (2, 3)


@pytest.mark.parametrize(("rows", "cols"), [(0, 3), (2, 0), (-1, 1)])
def test_for_grid_rejects_empty_grid(rows: int, cols: int) -> None:
    with pytest.raises(ValueError, match=f"rows=({rows}), cols=({cols})"):
        SlotConfig.for_grid(rows, cols)


def test_index_round_trip_and_errors() -> None:
    cfg = SlotConfig(("r0c0", "r1c0", "r0c1"))
    assert [cfg.slot_id_for_index(i) for i in range(3)] == ["r0c0", "r1c0", "r0c1"]
    assert [cfg.index_for_slot_id(s) for s in ("r0c0", "r1c0", "r0c1")] == [0, 1, 2]
    for bad_index in (-1, 3):
        with pytest.raises(
            ValueError,
            match=re.escape(f"slot index {bad_index} is out of range for 3 slots (expected 0..2)"),
        ):
            cfg.slot_id_for_index(bad_index)
    with pytest.raises(ValueError, match=re.escape("unknown slot id 'r9c9'; known ids: ['r0c0', 'r1c0', 'r0c1']")):
        cfg.index_for_slot_id("r9c9")


def test_positions_are_parsed_from_canonical_ids_in_tuple_order() -> None:
    cfg = SlotConfig(("r1c2", "r0c0", "r10c3"))
    assert cfg.positions == ((1, 2), (0, 0), (10, 3))
    assert (cfg.num_rows, cfg.num_cols) == (11, 4)


@pytest.mark.parametrize(
    "slot_ids",
    [
        ("left", "middle", "right"),
        ("r0c0", "left", "r0c2"),  # one non-canonical id: the whole grid falls back
        ("r0c1", "r0c01", "r1c0"),  # two ids parse to the same cell: fall back
        ("R0C0", "r0c1", "r0c2"),
    ],
)
def test_non_canonical_ids_fall_back_to_one_row_with_column_index(slot_ids: tuple[str, ...]) -> None:
    cfg = SlotConfig(slot_ids)
    assert cfg.positions == ((0, 0), (0, 1), (0, 2))
    assert (cfg.num_rows, cfg.num_cols) == (1, 3)


def test_position_ids_are_int64_row_and_column_tensors() -> None:
    cfg = SlotConfig.for_grid(2, 2)
    rows, cols = cfg.position_ids()
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64
    assert rows.shape == (4,) and cols.shape == (4,)
    assert rows.tolist() == [0, 0, 1, 1]
    assert cols.tolist() == [0, 1, 0, 1]
    rows_cpu, _ = cfg.position_ids(device="cpu")
    assert rows_cpu.device.type == "cpu"

    fallback_rows, fallback_cols = SlotConfig(("a", "b", "c")).position_ids()
    assert fallback_rows.dtype == torch.int64
    assert fallback_rows.tolist() == [0, 0, 0]
    assert fallback_cols.tolist() == [0, 1, 2]


def test_position_ids_under_fullgraph_compile() -> None:
    # Regression: `positions` was a functools.cached_property, whose __get__ takes an RLock on
    # Python < 3.12 that dynamo cannot trace, so its first access inside a compiled forward broke
    # fullgraph compilation.
    cfg = SlotConfig.for_grid(2, 3)

    @torch.compile(fullgraph=True, backend="eager")
    def row_major_index(x: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([r for r, _ in cfg.positions])
        cols = torch.tensor([c for _, c in cfg.positions])
        return x + rows * cfg.num_cols + cols

    assert row_major_index(torch.zeros(6, dtype=torch.long)).tolist() == [0, 1, 2, 3, 4, 5]


@settings(deadline=None, max_examples=40)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8))
def test_for_grid_round_trip(rows: int, cols: int) -> None:
    cfg = SlotConfig.for_grid(rows, cols)
    assert cfg.num_slots == rows * cols
    for index in range(cfg.num_slots):
        assert cfg.positions[index] == divmod(index, cols)
        assert cfg.index_for_slot_id(cfg.slot_id_for_index(index)) == index
    assert (cfg.num_rows, cfg.num_cols) == (rows, cols)


# --------------------------------------------------------------------------- ObservationLayout


@pytest.mark.parametrize(("state_dim", "num_slots", "slot_dim"), [(116, 3, 31), (140, 3, 39), (23 + 9 * 31, 9, 31), (23 + 1 * 39, 1, 39)])
def test_infer_slot_dim_for_31_and_39_feature_layouts(state_dim: int, num_slots: int, slot_dim: int) -> None:
    layout = ObservationLayout.infer(state_dim=state_dim, num_slots=num_slots)
    assert layout.slot_dim == slot_dim
    assert layout.base_dim == DEFAULT_BASE_DIM == 23
    assert layout.num_slots == num_slots
    assert layout.state_dim == state_dim


def test_defaults_match_the_contract() -> None:
    assert DEFAULT_SLOT_DIM == 31
    assert ObservationLayout(num_slots=3, slot_dim=DEFAULT_SLOT_DIM).state_dim == 116


def test_infer_rejects_non_integer_slot_dim_with_the_numbers() -> None:
    with pytest.raises(ValueError) as info:
        ObservationLayout.infer(state_dim=117, num_slots=3)
    message = str(info.value)
    assert "state_dim=117" in message
    assert "base_dim=23" in message
    assert "(117 - 23) / 3 = 31.3333" in message
    assert "positive integer" in message


@pytest.mark.parametrize(("state_dim", "shown"), [(23, "(23 - 23) / 3 = 0"), (20, "(20 - 23) / 3 = -1")])
def test_infer_rejects_non_positive_slot_dim_with_the_numbers(state_dim: int, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        ObservationLayout.infer(state_dim=state_dim, num_slots=3)


def test_infer_and_constructor_reject_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_slots must be a positive int, got 0"):
        ObservationLayout.infer(state_dim=116, num_slots=0)
    with pytest.raises(ValueError, match="slot_dim must be a positive int, got 0"):
        ObservationLayout(num_slots=3, slot_dim=0)
    with pytest.raises(ValueError, match="num_slots must be a positive int, got -1"):
        ObservationLayout(num_slots=-1, slot_dim=31)
    with pytest.raises(ValueError, match="base_dim must be a non-negative int, got -2"):
        ObservationLayout(num_slots=3, slot_dim=31, base_dim=-2)


def _shares_storage(view: torch.Tensor, source: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()


@pytest.mark.parametrize("leading", [(2, 5), (4,)], ids=["BTD", "BD"])
@pytest.mark.parametrize("slot_dim", [31, 39])
def test_split_shapes_and_views(leading: tuple[int, ...], slot_dim: int) -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=slot_dim)
    state = torch.randn(*leading, layout.state_dim)
    base, slots = layout.split(state)
    assert base.shape == (*leading, 23)
    assert slots.shape == (*leading, 3, slot_dim)

    # Views, not copies: same storage, and writes to the input show through.
    assert base._base is state and slots._base is state
    assert _shares_storage(base, state) and _shares_storage(slots, state)
    assert base.data_ptr() == state.data_ptr()
    assert slots.data_ptr() == state.data_ptr() + 23 * state.element_size()
    state[..., 0] = 123.0
    state[..., 23 + 2 * slot_dim + 4] = -7.0  # feature 4 of slot 2
    assert bool((base[..., 0] == 123.0).all())
    assert bool((slots[..., 2, 4] == -7.0).all())


@pytest.mark.parametrize("slot_dim", [31, 39])
def test_split_slot_k_block_is_at_base_dim_plus_k_slot_dim(slot_dim: int) -> None:
    layout = ObservationLayout(num_slots=4, slot_dim=slot_dim)
    state_dim = layout.state_dim
    state = torch.arange(2 * 3 * state_dim, dtype=torch.float32).reshape(2, 3, state_dim)
    base, slots = layout.split(state)
    for b in range(2):
        for t in range(3):
            row_start = (b * 3 + t) * state_dim
            assert base[b, t].tolist() == list(range(row_start, row_start + 23))
            for k in range(4):
                offset = row_start + 23 + k * slot_dim
                assert slots[b, t, k].tolist() == list(range(offset, offset + slot_dim))


def test_split_non_contiguous_input_is_still_a_correct_view() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    storage = torch.arange(116 * 4, dtype=torch.float32).reshape(116, 4)
    state = storage.t()  # [4, 116], non-contiguous
    base, slots = layout.split(state)
    assert _shares_storage(slots, storage)
    assert torch.equal(slots[:, 1], state[:, 23 + 31 : 23 + 62])
    assert torch.equal(base, state[:, :23])


def test_split_rejects_wrong_last_dim_with_shapes() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    with pytest.raises(ValueError) as info:
        layout.split(torch.zeros(2, 5, 115))
    message = str(info.value)
    assert message.startswith("state has shape (2, 5, 115)")
    assert "state_dim=116" in message
    assert "base_dim=23" in message and "slot_dim=31" in message
    with pytest.raises(ValueError, match=re.escape("obs has shape ()")):
        layout.split(torch.tensor(1.0), name="obs")


def test_active_mask_from_blueprint_indices() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    indices = torch.tensor([[-1, 0, 12], [5, -1, -1]])  # [B, N]
    assert layout.active_mask(indices).tolist() == [[False, True, True], [True, False, False]]
    indices_bt = torch.full((2, 4, 3), -1, dtype=torch.long)  # [B, T, N]
    indices_bt[1, 2, 0] = 3
    active = layout.active_mask(indices_bt)
    assert active.dtype == torch.bool and active.shape == (2, 4, 3)
    assert int(active.sum()) == 1 and bool(active[1, 2, 0])


def test_active_mask_explicit_mask_is_used_as_given() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    explicit = torch.tensor([[True, False, True]])
    # The explicit mask wins over blueprint indices (activity never comes from features).
    assert layout.active_mask(torch.tensor([[0, 0, 0]]), explicit) is explicit
    assert layout.active_mask(None, explicit) is explicit


def test_active_mask_errors() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    with pytest.raises(ValueError, match=re.escape("active_mask has dtype torch.float32, expected torch.bool")):
        layout.active_mask(None, torch.ones(2, 3))
    with pytest.raises(ValueError, match=re.escape("active_mask has shape (2, 4), expected (2, 3) (last dimension N=3)")):
        layout.active_mask(None, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("blueprint_indices has shape (2, 2), expected (2, 3) (last dimension N=3)")):
        layout.active_mask(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="pass blueprint_indices or an explicit active_mask"):
        layout.active_mask(None)
