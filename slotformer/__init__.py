"""slotformer: Slot Transformer and flat LSTM actor-critic policy networks for RL over slots.

Start with `create_policy` (a policy bundle) or the networks directly
(`SlotTransformerActorCritic`, `FactoredRecurrentActorCritic`); see the README.
"""

from __future__ import annotations

from typing import Any

from slotformer.actions import (
    _MOVED_TO_PRESET,
    ActionSpace,
    HeadSpec,
    PaddedHeads,
    _moved_to_preset,
    canonicalize_head,
    canonicalize_masks,
)
from slotformer.allocator import DEFAULT_MALLOC_THRESHOLD, configure_malloc
from slotformer.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, ObservationLayout, SlotConfig
from slotformer.distributions import (
    LOG_PROB_MIN,
    MASKED_LOGIT_VALUE,
    InvalidStateMachineError,
    MaskedCategorical,
    check_logits_and_mask,
    gather_log_prob,
    greedy_actions,
    log_prob_of,
    mask_logits,
    masked_log_probs,
    normalised_entropy,
    sample_actions,
)
from slotformer.layers import (
    BlueprintEmbedding,
    EncoderIntermediates,
    PointerHead,
    ResidualLSTM,
    SlotAttentionBlock,
    SlotPositionalEncoding,
    SlotTransformerEncoder,
)
from slotformer.migration import (
    ReferenceDimensions,
    convert_reference_state_dict,
    load_reference_state_dict,
    network_from_reference_state_dict,
    to_reference_state_dict,
)
from slotformer.networks import (
    ActorCriticConfig,
    ActorCriticCore,
    EvaluateActionsResult,
    FactoredRecurrentActorCritic,
    GetActionResult,
    LSTMConfig,
    PolicyInputs,
    SlotObservation,
    SlotTransformerActorCritic,
    TransformerConfig,
    TrunkIntermediates,
    read_inputs,
)
from slotformer.policy import (
    COMPILE_MODES,
    SLOT_BY_OP_KEY,
    ActionResult,
    ActorCriticBundle,
    EvalResult,
    ForwardResult,
    LSTMPolicyBundle,
    NetworkConfig,
    PolicyBundle,
    TransformerPolicyBundle,
    create_policy,
    get_policy,
    get_policy_class,
    list_policies,
    register_policy,
)
from slotformer.policy.registry import NETWORK_TYPES
from slotformer.presets.seed_lifecycle import seed_lifecycle_action_space
from slotformer.telemetry import (
    AttentionStats,
    TelemetryHook,
    TelemetryHookHandle,
    TelemetryHooks,
    capture_attention,
    compute_attention_stats,
    policy_diagnostics,
)
from slotformer.validation import expect, set_validation, validation, validation_enabled
from slotformer.viz import (
    attention_figure,
    attention_heatmap_image,
    network_badge,
    render_attention_heatmap,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "COMPILE_MODES",
    "DEFAULT_BASE_DIM",
    "DEFAULT_MALLOC_THRESHOLD",
    "DEFAULT_SLOT_DIM",
    "LOG_PROB_MIN",
    "MASKED_LOGIT_VALUE",
    "NETWORK_TYPES",
    "SLOT_BY_OP_KEY",
    "ActionResult",
    "ActionSpace",
    "ActorCriticBundle",
    "ActorCriticConfig",
    "ActorCriticCore",
    "AttentionStats",
    "BlueprintEmbedding",
    "CheckpointError",
    "EncoderIntermediates",
    "EvalResult",
    "EvaluateActionsResult",
    "FactoredRecurrentActorCritic",
    "ForwardResult",
    "GetActionResult",
    "HeadSpec",
    "InvalidStateMachineError",
    "LSTMConfig",
    "LSTMPolicyBundle",
    "MaskedCategorical",
    "NetworkConfig",
    "ObservationLayout",
    "PaddedHeads",
    "PointerHead",
    "PolicyBundle",
    "PolicyInputs",
    "ReferenceDimensions",
    "ResidualLSTM",
    "SlotAttentionBlock",
    "SlotConfig",
    "SlotObservation",
    "SlotPositionalEncoding",
    "SlotTransformerActorCritic",
    "SlotTransformerEncoder",
    "TelemetryHook",
    "TelemetryHookHandle",
    "TelemetryHooks",
    "TransformerConfig",
    "TransformerPolicyBundle",
    "TrunkIntermediates",
    "__version__",
    "attention_figure",
    "attention_heatmap_image",
    "canonicalize_head",
    "canonicalize_masks",
    "capture_attention",
    "check_logits_and_mask",
    "compute_attention_stats",
    "configure_malloc",
    "convert_reference_state_dict",
    "create_policy",
    "expect",
    "gather_log_prob",
    "get_policy",
    "get_policy_class",
    "greedy_actions",
    "list_policies",
    "load_checkpoint",
    "load_reference_state_dict",
    "log_prob_of",
    "mask_logits",
    "masked_log_probs",
    "network_badge",
    "network_from_reference_state_dict",
    "normalised_entropy",
    "policy_diagnostics",
    "read_checkpoint",
    "read_inputs",
    "register_policy",
    "render_attention_heatmap",
    "sample_actions",
    "save_checkpoint",
    "seed_lifecycle_action_space",
    "set_validation",
    "to_reference_state_dict",
    "validation",
    "validation_enabled",
]


def __getattr__(name: str) -> Any:
    # The seed-lifecycle enums and constants moved to slotformer.presets.seed_lifecycle;
    # the old names resolve for one release, with a DeprecationWarning.
    if name in _MOVED_TO_PRESET:
        return _moved_to_preset(__name__, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
