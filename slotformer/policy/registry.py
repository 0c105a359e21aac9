"""The policy registry: bundle classes by name (``"lstm"``, ``"transformer"``, ...).

A trainer picks its policy by name from config; a new network joins by decorating its
bundle class with `register_policy`, which refuses a class that does not implement the
whole `PolicyBundle` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from slotformer.policy.protocol import PolicyBundle, protocol_members

NETWORK_TYPES: tuple[str, ...] = ("lstm", "transformer")
"""The policy types shipped with slotformer (`list_policies` adds users' registrations)."""

_REGISTRY: dict[str, type[Any]] = {}

BundleClass = TypeVar("BundleClass", bound=type)


def register_policy(name: str) -> Callable[[BundleClass], BundleClass]:
    """Class decorator that registers a bundle class under ``name``.

    Raises:
        TypeError: the class lacks protocol members (all missing names are listed).
        ValueError: ``name`` is empty or already registered.

    Example::

        @register_policy("my-policy")   # every PolicyBundle member must exist on the class
        class MyBundle(ActorCriticBundle): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy name must be a non-empty str, got {name!r}")

    def decorate(cls: BundleClass) -> BundleClass:
        missing = [member for member in protocol_members() if not hasattr(cls, member)]
        if missing:
            raise TypeError(
                f"{cls.__name__} cannot be registered as policy {name!r}: it lacks the "
                f"PolicyBundle members {missing}"
            )
        if name in _REGISTRY:
            raise ValueError(
                f"a policy named {name!r} is already registered ({_REGISTRY[name].__name__}); "
                f"registered names: {list_policies()}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_policy_class(name: str) -> type[Any]:
    """The bundle class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown policy type {name!r}; registered policies: {list_policies()}"
        ) from None


def get_policy(name: str, **config: Any) -> PolicyBundle:
    """Build the bundle registered under ``name`` with constructor arguments ``config``.

    Example:
        >>> policy = get_policy("transformer", embed_dim=16, lstm_hidden_dim=16)
        >>> policy.network_type
        'transformer'
    """
    bundle: PolicyBundle = get_policy_class(name)(**config)
    return bundle


def list_policies() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(_REGISTRY)
