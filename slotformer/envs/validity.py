"""Which Slot Garden actions are valid: parsing an action, checking it rule by rule against the
state (independently of the masks of :mod:`slotformer.envs.observation`, so that a test can
hold one against the other), and explaining a rejected one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.envs.rules import LIVE_STAGES, NUM_STAGES, TEMPO_TRAINING_STEPS, SeedStage
from slotformer.presets.seed_lifecycle import HEAD_NAMES, NUM_OPS, Op, Tempo
from slotformer.validation import expect

if TYPE_CHECKING:
    from slotformer.envs.dynamics import SlotGardenEnv


class ActionChecker:
    """The validity tables of the environment's ``ActionSpace.default(N)``, on its device."""

    def __init__(self, action_space: ActionSpace, device: torch.device) -> None:
        self.sizes = action_space.sizes
        self.heads = action_space.heads
        # accepts[op, stage]: the stages whose slot an op may target (WAIT: any slot).
        accepts = torch.zeros(NUM_OPS, NUM_STAGES, dtype=torch.bool)
        accepts[Op.WAIT] = True
        accepts[Op.GERMINATE, SeedStage.EMPTY] = True
        accepts[Op.SET_ALPHA_TARGET, [SeedStage.BLENDING, SeedStage.HOLDING]] = True
        accepts[Op.PRUNE, list(LIVE_STAGES)] = True
        accepts[Op.FOSSILIZE, SeedStage.HOLDING] = True
        accepts[Op.ADVANCE, SeedStage.TRAINING] = True
        self.accepts = accepts.to(device)  # [6, 6]
        # relevance[op, head]: does the head's value matter for the op (slot/op checked apart).
        relevance = torch.zeros(NUM_OPS, len(HEAD_NAMES), dtype=torch.bool)
        for position, head in enumerate(self.heads):
            if head.relevant_ops is not None and head.name != "slot":
                relevance[sorted(head.relevant_ops), position] = True
        self.relevance = relevance.to(device)  # [6, 8]
        # Each head's valid range low..high - 1 [8] (blueprint NOOP 0 is not plantable).
        self.low = torch.tensor([int(name == "blueprint") for name in HEAD_NAMES], device=device)
        self.high = torch.tensor([self.sizes[name] for name in HEAD_NAMES], device=device)

    def check(self, env: SlotGardenEnv, heads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Validity ``[E]`` and a reason code ``[E]``: 0 valid, 1 bad op, 2 bad slot, else
        3 + the position (in head order) of the first relevant head with a bad value."""
        op, slot = heads["op"], heads["slot"]
        op_ok = (op >= 0) & (op < NUM_OPS)
        op_clamped = op.clamp(0, NUM_OPS - 1)
        slot_clamped = slot.clamp(0, env.num_slots - 1).unsqueeze(-1)  # [E, 1]
        stage = env.stage.gather(1, slot_clamped).squeeze(-1)  # [E]
        age = env.age.gather(1, slot_clamped).squeeze(-1)
        ready = age >= env._tempo_steps[env.tempo.gather(1, slot_clamped).squeeze(-1)]
        # ADVANCE also needs the seed to have trained for its tempo's number of steps.
        stage_ok = self.accepts[op_clamped, stage] & ((op != Op.ADVANCE) | ready)
        slot_in_range = (slot >= 0) & (slot < env.num_slots)
        slot_ok = (op == Op.WAIT) | (slot_in_range & stage_ok)
        values = torch.stack([heads[name] for name in HEAD_NAMES], dim=-1)  # [E, 8]
        head_ok = (values >= self.low) & (values < self.high)  # [E, 8]
        bad_head = self.relevance[op_clamped] & ~head_ok  # [E, 8]
        first_bad = bad_head.to(torch.uint8).argmax(-1)  # [E]
        reason = torch.where(bad_head.any(-1), 3 + first_bad, 0)
        reason = torch.where(slot_ok, reason, 2)
        reason = torch.where(op_ok, reason, 1)
        return reason == 0, reason

    def explain(self, env: SlotGardenEnv, heads: dict[str, Tensor], index: int, reason: int) -> str:
        """Why environment ``index``'s action was rejected with ``reason`` (from ``check``)."""
        values = {name: int(heads[name][index]) for name in HEAD_NAMES}
        op, slot = values["op"], values["slot"]
        op_name = Op(op).name if 0 <= op < NUM_OPS else "?"
        described = ", ".join(f"{name}={value}" for name, value in values.items())
        if reason == 1:
            why = f"op={op} is outside 0..{NUM_OPS - 1}"
        elif reason == 2 and 0 <= slot < env.num_slots:
            stage = SeedStage(int(env.stage[index, slot])).name
            age, tempo = int(env.age[index, slot]), int(env.tempo[index, slot])
            if op == Op.ADVANCE and stage == SeedStage.TRAINING.name:
                stage += (f" (age {age} < {TEMPO_TRAINING_STEPS[tempo]} steps of "
                          f"{Tempo(tempo).name} training)")
            valid = env.slot_by_op()[index, op].nonzero().flatten().tolist()
            why = (
                f"slot {slot} ({env.slot_config.slot_ids[slot]}) is {stage}, which "
                f"{op_name} does not accept; valid slots for {op_name}: {valid}"
            )
        elif reason == 2:
            why = f"slot={slot} is outside 0..{env.num_slots - 1}"
        else:
            name = self.heads[reason - 3].name
            noop = ", NOOP 0 cannot be planted" if name == "blueprint" else ""
            why = (f"{name}={values[name]} is not a valid choice for {op_name} (expected "
                   f"{int(bool(noop))}..{self.sizes[name] - 1}{noop})")
        return f"invalid action for environment {index} (op {op_name}): {described}; {why}"


def split_actions(
    actions: Mapping[str, Tensor] | Tensor, num_envs: int, device: torch.device
) -> dict[str, Tensor]:
    """``actions`` (a dict head name -> int64 ``[E]``, or int64 ``[E, 8]`` in head order) as a
    dict head name -> int64 ``[E]``, with a ``ValueError`` naming what is wrong otherwise."""
    e = num_envs
    if isinstance(actions, Tensor):
        expect("actions", actions, dtype=torch.long, device=device, shape=(e, len(HEAD_NAMES)),
               hint=f" (in head order {list(HEAD_NAMES)}, on the env's device)")
        return {name: actions[:, k] for k, name in enumerate(HEAD_NAMES)}
    if not isinstance(actions, Mapping):
        raise ValueError(
            f"actions must be a dict of int64 [E] tensors or an int64 [E, 8] tensor, got "
            f"{type(actions).__name__}"
        )
    if set(actions) != set(HEAD_NAMES):
        raise ValueError(f"actions has keys {sorted(actions)}, expected exactly {list(HEAD_NAMES)}")
    return {name: expect(f"actions[{name!r}]", value, dtype=torch.long, device=device, shape=(e,),
                         hint=" (on the env's device)") for name, value in actions.items()}
