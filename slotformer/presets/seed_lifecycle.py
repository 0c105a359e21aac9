"""The seed-lifecycle preset: the compatibility contract's action space and its enums.

slotformer's first user manages *seeds* (modules germinated into a host network, blended in,
then fossilised or pruned). Its action is eight factored heads, in this (load-bearing)
order: ``slot (N), blueprint (13), style (4), tempo (3), alpha_target (3), alpha_speed (4),
alpha_curve (5), op (6)``, the enums below naming each head's choices. It is the networks'
default (`ActionSpace.default` delegates here); any other problem builds its own
`ActionSpace` from `HeadSpec` objects and passes it as ``action_space=``.

Example:
    >>> space = seed_lifecycle_action_space(num_slots=4)
    >>> space.head_names == HEAD_NAMES, space.sizes["slot"], space.num_ops == NUM_OPS
    (True, 4, True)
    >>> space.head("blueprint").relevant_ops == {Op.GERMINATE}
    True
"""

from __future__ import annotations

from enum import IntEnum

from slotformer.actions import ActionSpace, HeadSpec


# Each enum's members are its head's actions, valued by their position (load-bearing).
class Op(IntEnum):
    """The op head's choices (what to do this step)."""
    WAIT, GERMINATE, SET_ALPHA_TARGET, PRUNE, FOSSILIZE, ADVANCE = range(6)


class BlueprintAction(IntEnum):
    """The blueprint head's choices (which module a GERMINATE plants)."""
    (NOOP, CONV_LIGHT, ATTENTION, NORM, DEPTHWISE, BOTTLENECK, CONV_SMALL, CONV_HEAVY, LORA,
     LORA_LARGE, MLP_SMALL, MLP, FLEX_ATTENTION) = range(13)


class Style(IntEnum):
    """How a seed is blended into the host."""
    LINEAR_ADD, LINEAR_MULTIPLY, SIGMOID_ADD, GATED_GATE = range(4)


class Tempo(IntEnum):
    """How long a germinated seed trains before blending."""
    FAST, STANDARD, SLOW = range(3)


class AlphaTarget(IntEnum):
    """The blend level a seed moves toward."""
    HALF, SEVENTY, FULL = range(3)


class AlphaSpeed(IntEnum):
    """How fast alpha moves toward its target."""
    INSTANT, FAST, MEDIUM, SLOW = range(4)


class AlphaCurve(IntEnum):
    """The shape of alpha's path toward its target."""
    LINEAR, COSINE, SIGMOID_GENTLE, SIGMOID, SIGMOID_SHARP = range(5)


NUM_OPS, NUM_BLUEPRINTS = len(Op), len(BlueprintAction)

HEAD_NAMES: tuple[str, ...] = (
    "slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op",
)
"""The seed-lifecycle heads, in the contract's (load-bearing) order."""


def seed_lifecycle_action_space(num_slots: int = 3) -> ActionSpace:
    """The compatibility contract's eight heads (DESIGN.md), with a slot pointer of size
    ``num_slots``. A head irrelevant to the chosen op is forced to its canonical action (the
    last argument of each `HeadSpec` below); the slot pointer, relevant for every op but WAIT,
    takes the first valid slot of its mask."""
    germinate = frozenset({Op.GERMINATE})
    germinate_or_set = frozenset({Op.GERMINATE, Op.SET_ALPHA_TARGET})
    set_or_prune = frozenset({Op.SET_ALPHA_TARGET, Op.PRUNE})
    return ActionSpace(
        heads=(
            HeadSpec("slot", num_slots, frozenset(Op) - {Op.WAIT}, None),
            HeadSpec("blueprint", NUM_BLUEPRINTS, germinate, BlueprintAction.NOOP),
            HeadSpec("style", len(Style), germinate_or_set, Style.SIGMOID_ADD),
            HeadSpec("tempo", len(Tempo), germinate, Tempo.STANDARD),
            HeadSpec("alpha_target", len(AlphaTarget), germinate_or_set, AlphaTarget.FULL),
            HeadSpec("alpha_speed", len(AlphaSpeed), set_or_prune, AlphaSpeed.INSTANT),
            HeadSpec("alpha_curve", len(AlphaCurve), set_or_prune, AlphaCurve.LINEAR),
            HeadSpec("op", NUM_OPS),
        ),
        op_head="op", pointer_head="slot",
    )


__all__ = ["HEAD_NAMES", "NUM_BLUEPRINTS", "NUM_OPS", "AlphaCurve", "AlphaSpeed", "AlphaTarget",
           "BlueprintAction", "Op", "Style", "Tempo", "seed_lifecycle_action_space"]
