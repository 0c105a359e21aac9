"""Ready-made action spaces and their vocabularies.

`seed_lifecycle` is the compatibility contract's (the networks' default): eight heads for
managing seeds in a host network, with the enums naming their choices. Import from the
module itself (``from slotformer.presets.seed_lifecycle import Op``) or from here.
"""

from __future__ import annotations

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
    seed_lifecycle_action_space,
)

__all__ = [
    "HEAD_NAMES",
    "NUM_BLUEPRINTS",
    "NUM_OPS",
    "AlphaCurve",
    "AlphaSpeed",
    "AlphaTarget",
    "BlueprintAction",
    "Op",
    "Style",
    "Tempo",
    "seed_lifecycle_action_space",
]
