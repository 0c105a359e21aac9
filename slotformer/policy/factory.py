"""`create_policy` and `NetworkConfig`: build, move and compile a bundle from config.

A trainer embeds `NetworkConfig` in its own config and calls
``create_policy(state_dim=..., slot_config=..., device=..., config=cfg.network)``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.networks.core import VALUE_BASELINES
from slotformer.policy.bundles import COMPILE_MODES, check_compile_mode
from slotformer.policy.protocol import PolicyBundle
from slotformer.policy.registry import NETWORK_TYPES, get_policy_class, list_policies
from slotformer.validation import check_positive_int


@dataclass
class NetworkConfig:
    """Which policy network to build, for embedding in a trainer's config.

    Fields a network type does not take are ignored for it (``embed_dim`` and the
    ``transformer_*`` fields for ``"lstm"``), except ``action_space``: a bundle that cannot
    take it is an error, not a silently different policy. None = the bundle's default.

    Args:
        network_type: a registered policy name, ``"lstm"`` or ``"transformer"``.
        lstm_hidden_dim: the recurrent width H; None = the bundle's default (512 for
            ``"lstm"``, 128 for ``"transformer"``).
        hidden_dim: deprecated name of ``lstm_hidden_dim`` (one release, with a
            ``DeprecationWarning``).
        embed_dim: slot token width (transformer).
        transformer_layers: attention blocks (transformer).
        transformer_heads: attention heads (transformer).
        value_baseline: ``"v"`` (V(s), the default, as the networks) or ``"q"``
            (Q(s, op)): what ``value`` holds.
        compile_mode: one of `COMPILE_MODES` (``"off"`` = eager).
        action_space: the factored heads, an `ActionSpace` or its ``to_dict()`` form (as
            read from a config file; stored as an `ActionSpace`); None = the seed-lifecycle
            preset for the grid.
        num_slot_types: the slot-type vocabulary (``blueprint_indices`` in
            ``[0, num_slot_types)``); None = 13.
        base_dim: features in the observation's base block; None = 23.
        slot_dim: features per slot; None = inferred from ``state_dim`` (31 when
            ``state_dim`` is None too).

    Example:
        >>> cfg = NetworkConfig(network_type="transformer", lstm_hidden_dim=32, embed_dim=16)
        >>> policy = create_policy(config=cfg)
        >>> policy.network_type, policy.lstm_hidden_dim
        ('transformer', 32)
        >>> cfg = NetworkConfig(num_slot_types=5, base_dim=4, slot_dim=6, lstm_hidden_dim=16)
        >>> create_policy(config=cfg, trunk_dim=16).state_dim  # 4 + 3 slots x 6
        22
    """

    network_type: str = "lstm"
    lstm_hidden_dim: int | None = None
    embed_dim: int = 64
    transformer_layers: int = 2
    transformer_heads: int = 4
    value_baseline: str = "v"
    compile_mode: str = "off"
    hidden_dim: int | None = None
    action_space: ActionSpace | None = None
    num_slot_types: int | None = None
    base_dim: int | None = None
    slot_dim: int | None = None

    def __post_init__(self) -> None:
        if self.hidden_dim is not None:
            warnings.warn(
                "NetworkConfig(hidden_dim=...) is deprecated and will be removed in the next "
                "release; use lstm_hidden_dim=",
                DeprecationWarning,
                stacklevel=3,
            )
            if self.lstm_hidden_dim is not None:
                raise ValueError("NetworkConfig: pass lstm_hidden_dim or hidden_dim, not both")
            self.lstm_hidden_dim, self.hidden_dim = self.hidden_dim, None
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
        optional = ("lstm_hidden_dim", "num_slot_types", "slot_dim")
        for name in (*optional, "embed_dim", "transformer_layers", "transformer_heads"):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            check_positive_int(f"NetworkConfig.{name}", value)
        if self.base_dim is not None and (
            not isinstance(self.base_dim, int) or isinstance(self.base_dim, bool)
            or self.base_dim < 0
        ):
            raise ValueError(f"NetworkConfig.base_dim must be a non-negative int, got {self.base_dim!r}")
        if isinstance(self.action_space, Mapping):  # its to_dict() form, e.g. from a YAML file
            self.action_space = ActionSpace.from_dict(self.action_space)
        elif self.action_space is not None and not isinstance(self.action_space, ActionSpace):
            raise TypeError(
                f"NetworkConfig.action_space must be an ActionSpace or its to_dict() form, got "
                f"{type(self.action_space).__name__}"
            )

    def policy_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for ``network_type``'s bundle (the fields it accepts)."""
        accepted = _accepted_arguments(get_policy_class(self.network_type))
        width = "lstm_hidden_dim" if "lstm_hidden_dim" in accepted else "hidden_dim"
        fields = {
            width: self.lstm_hidden_dim,
            "embed_dim": self.embed_dim,
            "transformer_layers": self.transformer_layers,
            "transformer_heads": self.transformer_heads,
            "value_baseline": self.value_baseline,
            "num_slot_types": self.num_slot_types,
            "base_dim": self.base_dim,
            "slot_dim": self.slot_dim,
            "action_space": self.action_space,
        }
        if self.action_space is not None and "action_space" not in accepted:
            raise TypeError(
                f"NetworkConfig.action_space is set but {self.network_type!r} "
                f"({get_policy_class(self.network_type).__name__}) takes no action_space"
            )
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
        state_dim: the flat observation width D (None = ``base_dim + slot_dim * N``, by
            default ``23 + 31 * N``).
        slot_config: the slots (None = 3 in one row).
        device: where the network lives.
        compile_mode: one of `COMPILE_MODES`; None = ``config.compile_mode``, or ``"off"``.
        config: network choices; ``overrides`` win over its fields.
        **overrides: further constructor arguments of the bundle (e.g. ``trunk_dim`` for
            ``"lstm"``, ``head_hidden`` for ``"transformer"``; for both, ``action_space``
            (an `ActionSpace`, default: the seed-lifecycle preset), ``num_slot_types``,
            ``base_dim``, ``slot_dim`` and the other config fields).

    Raises:
        ValueError: unknown policy type or compile mode (the valid ones are listed), or a
            ``policy_type`` that contradicts ``config.network_type``.
        TypeError: an override the bundle does not accept (the accepted ones are listed).

    Example:
        >>> policy = create_policy("transformer", slot_config=SlotConfig.for_grid(2, 2),
        ...                        lstm_hidden_dim=32, embed_dim=16, head_hidden=32)
        >>> policy.state_dim, policy.slot_config.num_slots
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
    accepted = _accepted_arguments(cls)
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
    # The observation width goes first, by position: slotformer's bundles call it state_dim,
    # bundles registered for 0.1 may call it feature_dim.
    policy: PolicyBundle = cls(state_dim, slot_config=slot_config, **kwargs)
    policy.to(device)
    policy.compile(mode=compile_mode)
    return policy


def _accepted_arguments(cls: type) -> list[str]:
    """A bundle class's keyword arguments: `ActorCriticBundle.accepted_arguments` where it
    has one, else its signature's parameters (bundles registered by users)."""
    method = getattr(cls, "accepted_arguments", None)
    if callable(method):
        return list(method())
    return list(inspect.signature(cls).parameters)


__all__ = ["COMPILE_MODES", "NETWORK_TYPES", "NetworkConfig", "create_policy"]
