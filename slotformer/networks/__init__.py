"""Actor-critic networks: the boundary, the result records, the shared core and two trunks.

One concern a module: `inputs` (the one boundary: checks and normalisation into
`PolicyInputs`), `results` (what networks and bundles return), `configs` (the shared
hyper-parameters), `core` (the shared actor-critic maths), `transformer` and `lstm` (the two
trunks, each with its config).
"""

from slotformer.networks.configs import FLOOR_MODES, VALUE_BASELINES, ActorCriticConfig
from slotformer.networks.core import ActorCriticCore, init_actor_critic_weights
from slotformer.networks.inputs import PolicyInputs, SlotContext, SlotObservation, read_inputs
from slotformer.networks.lstm import FactoredRecurrentActorCritic, LSTMConfig
from slotformer.networks.results import (
    ActionResult,
    EvalResult,
    EvaluateActionsResult,
    ForwardResult,
    GetActionResult,
    TrunkIntermediates,
)
from slotformer.networks.transformer import (
    PointerHead,
    SlotTransformerActorCritic,
    TransformerConfig,
)

__all__ = [
    "FLOOR_MODES",
    "VALUE_BASELINES",
    "ActionResult",
    "ActorCriticConfig",
    "ActorCriticCore",
    "EvalResult",
    "EvaluateActionsResult",
    "FactoredRecurrentActorCritic",
    "ForwardResult",
    "GetActionResult",
    "LSTMConfig",
    "PointerHead",
    "PolicyInputs",
    "SlotContext",
    "SlotObservation",
    "SlotTransformerActorCritic",
    "TransformerConfig",
    "TrunkIntermediates",
    "init_actor_critic_weights",
    "read_inputs",
]
