"""slotformer: Slot Transformer and flat LSTM actor-critic policy networks for RL over slots."""

from __future__ import annotations

from slotformer.validation import set_validation, validation, validation_enabled

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "set_validation",
    "validation",
    "validation_enabled",
]
