"""Actor-critic networks: the shared core and the two trunks."""

from slotformer.networks.core import (
    ActorCriticCore,
    EvaluateActionsResult,
    GetActionResult,
    init_actor_critic_weights,
)
from slotformer.networks.lstm import FactoredRecurrentActorCritic
from slotformer.networks.transformer import SlotTransformerActorCritic

__all__ = [
    "ActorCriticCore",
    "EvaluateActionsResult",
    "FactoredRecurrentActorCritic",
    "GetActionResult",
    "SlotTransformerActorCritic",
    "init_actor_critic_weights",
]
