"""The networks' hyper-parameters: `ActorCriticConfig`, which `TransformerConfig` and
`LSTMConfig` (next to their networks) extend."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, SlotConfig, check_base_dim
from slotformer.distributions import FLOOR_MODES
from slotformer.validation import check_positive_int

VALUE_BASELINES = ("q", "v")
"""What ``value`` holds: Q(s, op) (``"q"``) or V(s) (``"v"``)."""


@dataclass(frozen=True)
class ActorCriticConfig:
    """What both networks share; each network's frozen config dataclass extends it (nanoGPT's
    ``GPTConfig``): the network takes it, a bundle holds it, a checkpoint stores
    ``dataclasses.asdict(config)``.

    Args:
        state_dim: D, the flat observation width ``base_dim + N * slot_dim``; None = the
            default layout's ``base_dim + 31 * N`` for the grid the network is built on.
        lstm_hidden_dim: H, the recurrent core's width.
        lstm_layers: recurrent layers.
        value_baseline: ``"v"`` (``value`` = V(s), the unbiased PPO baseline and the
            reference network's; the default) or ``"q"`` (``value`` = Q(s, op)).
        base_dim: features in the base block of the observation (default 23).
        blueprint_embed_dim: width of each slot's type (blueprint) embedding.
        num_slot_types: the slot-type vocabulary: ``blueprint_indices`` take values in
            ``[0, num_slot_types)``, or -1 for an empty slot (default 13, the seed
            lifecycle's blueprints).
        slot_dim: features per slot; None = inferred from ``state_dim`` (the Slot
            Transformer needs it; the flat network takes any ``state_dim``).
        floor_mode: how ``probability_floor`` is applied, ``"clip"`` (the reference
            network's) or ``"mix"`` (see `slotformer.distributions.masked_log_probs`).
        use_q_head: build the Q(s, op) head (an auxiliary head, detached from the trunk).
            False: no parameters, ``q_value`` is None and ``value_baseline`` must be ``"v"``.
        use_contribution_head: build the per-slot contribution predictor (auxiliary).
            False: no parameters and ``pred_contributions`` is None.
    """

    state_dim: int | None = None
    lstm_hidden_dim: int = 128
    lstm_layers: int = 1
    value_baseline: str = "v"
    base_dim: int = DEFAULT_BASE_DIM
    blueprint_embed_dim: int = 4
    num_slot_types: int = 13
    slot_dim: int | None = None
    floor_mode: str = "clip"
    use_q_head: bool = True
    use_contribution_head: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # Sizes are checked here; rates (dropout) by the layers that use them.
            if f.type in ("int", int) and f.name != "base_dim":
                check_positive_int(f"{type(self).__name__}.{f.name}", value)
        for name in ("state_dim", "slot_dim"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("use_q_head", "use_contribution_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, choices in (("floor_mode", FLOOR_MODES), ("value_baseline", VALUE_BASELINES)):
            if (value := getattr(self, name)) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        if self.value_baseline == "q" and not self.use_q_head:
            raise ValueError(
                'value_baseline="q" needs the Q head: pass use_q_head=True or value_baseline="v"'
            )
        check_base_dim(self.base_dim)

    def for_slots(self: _Config, slot_config: SlotConfig) -> _Config:
        """This config with ``state_dim`` filled in for ``slot_config``: ``base_dim + N *
        slot_dim`` (31 features per slot when ``slot_dim`` is None)."""
        if self.state_dim is not None:
            return self
        slot_dim = DEFAULT_SLOT_DIM if self.slot_dim is None else self.slot_dim
        return replace(self, state_dim=self.base_dim + slot_dim * slot_config.num_slots)


_Config = TypeVar("_Config", bound=ActorCriticConfig)


def with_contract_arguments(
    config: _Config, config_class: type[_Config], **arguments: object
) -> _Config:
    """``config`` with the network constructor's contract arguments that were given (not
    None) applied over its fields: ``Network(state_dim, ..., config=...)``."""
    if not isinstance(config, config_class):
        raise TypeError(f"config must be a {config_class.__name__}, got {type(config).__name__}")
    given: dict[str, Any] = {name: value for name, value in arguments.items() if value is not None}
    return replace(config, **given) if given else config
