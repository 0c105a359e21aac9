"""`create_policy`: build, move and compile a bundle.

A trainer holds the network's config dataclass (`TransformerConfig`, `LSTMConfig`) in its own
config and calls ``create_policy(state_dim=..., slot_config=..., device=..., config=...)``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from slotformer.config import SlotConfig
from slotformer.networks.configs import ActorCriticConfig
from slotformer.policy.bundles import COMPILE_MODES, check_compile_mode
from slotformer.policy.protocol import PolicyBundle
from slotformer.policy.registry import NETWORK_TYPES, get_policy_class, list_policies


def create_policy(
    policy_type: str | None = None,
    state_dim: int | None = None,
    *,
    slot_config: SlotConfig | None = None,
    device: torch.device | str = "cpu",
    compile_mode: str = "off",
    config: ActorCriticConfig | None = None,
    **overrides: Any,
) -> PolicyBundle:
    """Build a policy bundle, move it to ``device``, then compile it.

    Args:
        policy_type: a registered name (``"lstm"``, ``"transformer"``); None = the policy
            whose config class ``config`` is, or ``"lstm"`` without a config.
        state_dim: the flat observation width D (None = ``base_dim + slot_dim * N``).
        slot_config: the slots (None = 3 in one row).
        device: where the network lives.
        compile_mode: one of `COMPILE_MODES` (``"off"`` = eager).
        config: the network's config dataclass (`TransformerConfig`, `LSTMConfig`).
        **overrides: further bundle arguments, winning over ``config``: its config's fields
            by name (e.g. ``lstm_hidden_dim``) and ``action_space`` (default: the
            seed-lifecycle preset).

    Raises:
        ValueError: unknown policy type or compile mode (the valid ones are listed), or a
            ``policy_type`` whose config class is not ``config``'s.
        TypeError: an override the bundle does not accept (the accepted ones are listed).

    Example:
        >>> policy = create_policy("transformer", slot_config=SlotConfig.for_grid(2, 2),
        ...                        lstm_hidden_dim=32, embed_dim=16, head_hidden=32)
        >>> policy.state_dim, policy.slot_config.num_slots
        (147, 4)
    """
    if policy_type is None:
        policy_type = "lstm" if config is None else _policy_for_config(config)
    cls = get_policy_class(policy_type)
    config_class = getattr(cls, "config_class", None)
    if config is not None and config_class is not None and not isinstance(config, config_class):
        raise ValueError(
            f"config is a {type(config).__name__}, but a {policy_type!r} policy takes a "
            f"{config_class.__name__}"
        )
    check_compile_mode(compile_mode)
    accepted = _accepted_arguments(cls)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"{cls.__name__} ({policy_type!r}) does not accept {unknown}; it accepts "
            f"{sorted(accepted)}"
        )
    kwargs: dict[str, Any] = dict(overrides)
    if config is not None:
        kwargs["config"] = config
    # By position: slotformer's bundles call it state_dim, the reference's feature_dim.
    policy: PolicyBundle = cls(state_dim, slot_config=slot_config, **kwargs)
    policy.to(device)
    policy.compile(mode=compile_mode)
    return policy


def _policy_for_config(config: ActorCriticConfig) -> str:
    """The registered policy whose bundle holds ``config``'s class."""
    for name in list_policies():
        if getattr(get_policy_class(name), "config_class", None) is type(config):
            return name
    raise ValueError(
        f"no registered policy takes a {type(config).__name__}; registered policies: "
        f"{list_policies()}"
    )


def _accepted_arguments(cls: type) -> list[str]:
    """A bundle class's keyword arguments: `ActorCriticBundle.accepted_arguments` where it
    has one, else its signature's parameters (bundles registered by users)."""
    method = getattr(cls, "accepted_arguments", None)
    if callable(method):
        return list(method())
    return list(inspect.signature(cls).parameters)


__all__ = ["COMPILE_MODES", "NETWORK_TYPES", "create_policy"]
