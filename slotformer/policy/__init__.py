"""Policy bundles: the `PolicyBundle` protocol, result types, registry and `create_policy`.

Importing this package registers the ``"lstm"`` and ``"transformer"`` bundles.
"""

from slotformer.networks.inputs import SLOT_BY_OP_KEY
from slotformer.networks.lstm import LSTMConfig
from slotformer.networks.results import ActionResult, EvalResult, ForwardResult
from slotformer.networks.transformer import TransformerConfig
from slotformer.policy.bundles import (
    COMPILE_MODES,
    ActorCriticBundle,
    LSTMPolicyBundle,
    TransformerPolicyBundle,
)
from slotformer.policy.factory import NETWORK_TYPES, create_policy
from slotformer.policy.protocol import PolicyBundle, protocol_members
from slotformer.policy.registry import get_policy, get_policy_class, list_policies, register_policy

__all__ = [
    "COMPILE_MODES",
    "NETWORK_TYPES",
    "SLOT_BY_OP_KEY",
    "ActionResult",
    "ActorCriticBundle",
    "EvalResult",
    "ForwardResult",
    "LSTMConfig",
    "LSTMPolicyBundle",
    "PolicyBundle",
    "TransformerConfig",
    "TransformerPolicyBundle",
    "create_policy",
    "get_policy",
    "get_policy_class",
    "list_policies",
    "protocol_members",
    "register_policy",
]
