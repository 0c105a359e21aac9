"""slotformer: Slot Transformer and flat LSTM actor-critic policy networks for RL over slots.

Start with `create_policy` (a policy bundle) or the networks directly
(`SlotTransformerActorCritic`, `FactoredRecurrentActorCritic`); see the README.
"""

from __future__ import annotations

from slotformer.actions import (
    HEAD_NAMES,
    NUM_BLUEPRINTS,
    NUM_OPS,
    ActionSpace,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlueprintAction,
    HeadSpec,
    Op,
    Style,
    Tempo,
    canonicalize_masks,
)
from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, ObservationLayout, SlotConfig
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
from slotformer.layers import (
    BlueprintEmbedding,
    PointerHead,
    ResidualLSTM,
    SlotAttentionBlock,
    SlotPositionalEncoding,
    SlotTransformerEncoder,
)
from slotformer.networks import (
    ActorCriticCore,
    EvaluateActionsResult,
    FactoredRecurrentActorCritic,
    GetActionResult,
    SlotTransformerActorCritic,
)
from slotformer.telemetry import (
    NETWORK_TYPES,
    AttentionStats,
    TelemetryHook,
    TelemetryHookHandle,
    TelemetryHooks,
    capture_attention,
    compute_attention_stats,
    policy_diagnostics,
)
from slotformer.validation import set_validation, validation, validation_enabled
from slotformer.viz import attention_heatmap_image, network_badge, render_attention_heatmap

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_BASE_DIM",
    "DEFAULT_SLOT_DIM",
    "HEAD_NAMES",
    "MASKED_LOGIT_VALUE",
    "NETWORK_TYPES",
    "NUM_BLUEPRINTS",
    "NUM_OPS",
    "ActionSpace",
    "ActorCriticCore",
    "AlphaCurve",
    "AlphaSpeed",
    "AlphaTarget",
    "AttentionStats",
    "BlueprintAction",
    "BlueprintEmbedding",
    "EvaluateActionsResult",
    "FactoredRecurrentActorCritic",
    "GetActionResult",
    "HeadSpec",
    "InvalidStateMachineError",
    "MaskedCategorical",
    "ObservationLayout",
    "Op",
    "PointerHead",
    "ResidualLSTM",
    "SlotAttentionBlock",
    "SlotConfig",
    "SlotPositionalEncoding",
    "SlotTransformerActorCritic",
    "SlotTransformerEncoder",
    "Style",
    "TelemetryHook",
    "TelemetryHookHandle",
    "TelemetryHooks",
    "Tempo",
    "__version__",
    "attention_heatmap_image",
    "canonicalize_masks",
    "capture_attention",
    "check_logits_and_mask",
    "compute_attention_stats",
    "greedy_actions",
    "log_prob_of",
    "mask_logits",
    "masked_log_probs",
    "network_badge",
    "normalised_entropy",
    "policy_diagnostics",
    "render_attention_heatmap",
    "sample_actions",
    "set_validation",
    "validation",
    "validation_enabled",
]
