"""`create_policy` and `NetworkConfig`: build, move and compile a bundle from config.

A trainer embeds `NetworkConfig` in its own config and calls
``create_policy(state_dim=..., slot_config=..., device=..., config=cfg.network)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from slotformer.config import SlotConfig
from slotformer.networks.core import VALUE_BASELINES
from slotformer.policy.bundles import COMPILE_MODES, check_compile_mode
from slotformer.policy.protocol import PolicyBundle
from slotformer.policy.registry import get_policy_class, list_policies
from slotformer.telemetry import NETWORK_TYPES
from slotformer.validation import check_positive_int


@dataclass
class NetworkConfig:
    """Which policy network to build, for embedding in a trainer's config.

    Fields a network type does not take are ignored for it (``embed_dim`` and the
    ``transformer_*`` fields for ``"lstm"``).

    Args:
        network_type: a registered policy name, ``"lstm"`` or ``"transformer"``.
        hidden_dim: the recurrent width H; None = the bundle's default (512 for
            ``"lstm"``, 128 for ``"transformer"``).
        embed_dim: slot token width (transformer).
        transformer_layers: attention blocks (transformer).
        transformer_heads: attention heads (transformer).
        value_baseline: ``"q"`` or ``"v"``: what ``value`` holds.
        compile_mode: one of `COMPILE_MODES` (``"off"`` = eager).

    Example:
        >>> cfg = NetworkConfig(network_type="transformer", hidden_dim=32, embed_dim=16)
        >>> policy = create_policy(config=cfg)
        >>> policy.network_type, policy.hidden_dim
        ('transformer', 32)
    """

    network_type: str = "lstm"
    hidden_dim: int | None = None
    embed_dim: int = 64
    transformer_layers: int = 2
    transformer_heads: int = 4
    value_baseline: str = "q"
    compile_mode: str = "off"

    def __post_init__(self) -> None:
        if self.network_type not in list_policies():
            raise ValueError(
                f"unknown network_type {self.network_type!r}; registered policies: "
                f"{list_policies()}"
            )
        if self.value_baseline not in VALUE_BASELINES:
            raise ValueError(
                f"value_baseline must be one of {list(VALUE_BASELINES)}, got "
                f"{self.value_baseline!r}"
            )
        check_compile_mode(self.compile_mode)
        for name in ("hidden_dim", "embed_dim", "transformer_layers", "transformer_heads"):
            value = getattr(self, name)
            if value is None and name == "hidden_dim":
                continue
            check_positive_int(f"NetworkConfig.{name}", value)

    def policy_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for ``network_type``'s bundle (the fields it accepts)."""
        accepted = inspect.signature(get_policy_class(self.network_type)).parameters
        fields = {
            "hidden_dim": self.hidden_dim,
            "embed_dim": self.embed_dim,
            "transformer_layers": self.transformer_layers,
            "transformer_heads": self.transformer_heads,
            "value_baseline": self.value_baseline,
        }
        return {k: v for k, v in fields.items() if v is not None and k in accepted}


def create_policy(
    policy_type: str | None = None,
    state_dim: int | None = None,
    *,
    slot_config: SlotConfig | None = None,
    device: torch.device | str = "cpu",
    compile_mode: str | None = None,
    config: NetworkConfig | None = None,
    **overrides: Any,
) -> PolicyBundle:
    """Build a policy bundle, move it to ``device``, then compile it.

    Args:
        policy_type: a registered name (``"lstm"``, ``"transformer"``); None =
            ``config.network_type``, or ``"lstm"`` without a config.
        state_dim: the flat observation width D (None = ``base_dim + 31 * N``, by default
            ``23 + 31 * N``).
        slot_config: the slots (None = 3 in one row).
        device: where the network lives.
        compile_mode: one of `COMPILE_MODES`; None = ``config.compile_mode``, or ``"off"``.
        config: network choices; ``overrides`` win over its fields.
        **overrides: further constructor arguments of the bundle (e.g. ``trunk_dim`` for
            ``"lstm"``, ``head_hidden`` for ``"transformer"``).

    Raises:
        ValueError: unknown policy type or compile mode (the valid ones are listed), or a
            ``policy_type`` that contradicts ``config.network_type``.
        TypeError: an override the bundle does not accept (the accepted ones are listed).

    Example:
        >>> policy = create_policy("transformer", slot_config=SlotConfig.for_grid(2, 2),
        ...                        hidden_dim=32, embed_dim=16, head_hidden=32)
        >>> policy.feature_dim, policy.slot_config.num_slots
        (147, 4)
    """
    if config is not None and not isinstance(config, NetworkConfig):
        raise TypeError(f"config must be a NetworkConfig, got {type(config).__name__}")
    if policy_type is None:
        policy_type = config.network_type if config is not None else "lstm"
    elif config is not None and policy_type != config.network_type:
        raise ValueError(
            f"policy_type={policy_type!r} contradicts config.network_type="
            f"{config.network_type!r}; pass one of them"
        )
    if policy_type not in list_policies():
        raise ValueError(
            f"unknown policy type {policy_type!r}; registered policies: {list_policies()}"
        )
    if compile_mode is None:
        compile_mode = config.compile_mode if config is not None else "off"
    check_compile_mode(compile_mode)

    cls = get_policy_class(policy_type)
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"{cls.__name__} ({policy_type!r}) does not accept {unknown}; it accepts "
            f"{sorted(accepted)}"
        )
    kwargs: dict[str, Any] = config.policy_kwargs() if config is not None else {}
    kwargs.update(overrides)
    if "feature_dim" in kwargs and state_dim is not None:
        raise ValueError("pass the observation width once: state_dim or feature_dim")
    kwargs.setdefault("feature_dim", state_dim)
    policy: PolicyBundle = cls(slot_config=slot_config, **kwargs)
    policy.to(device)
    policy.compile(mode=compile_mode)
    return policy


__all__ = ["COMPILE_MODES", "NETWORK_TYPES", "NetworkConfig", "create_policy"]
