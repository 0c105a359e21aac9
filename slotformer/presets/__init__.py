"""Ready-made action spaces and their vocabularies.

`seed_lifecycle` is the compatibility contract's (the networks' default): eight heads for
managing seeds in a host network, with the enums naming their choices. Import from the
module itself (``from slotformer.presets.seed_lifecycle import Op``) or from here.
"""

from __future__ import annotations

from slotformer.presets import seed_lifecycle
from slotformer.presets.seed_lifecycle import *  # noqa: F403

__all__ = list(seed_lifecycle.__all__)
