"""`PolicyBundle`: what a trainer may rely on, whichever network sits inside.

A bundle owns one actor-critic network and adapts it to a trainer: masks travel as one dict,
results come back as frozen records (`ActionResult`, `EvalResult`, `ForwardResult`), and
device placement, compilation, gradient checkpointing, target-network updates and state
dicts go through the bundle, so that the trainer never touches a compiled wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from slotformer.config import SlotConfig
from slotformer.networks.inputs import SLOT_BY_OP_KEY as SLOT_BY_OP_KEY  # re-exported
from slotformer.networks.inputs import Hidden, ProbabilityFloor, SlotObservation
from slotformer.networks.results import ActionResult, EvalResult, ForwardResult

Masks = Mapping[str, Tensor | None]
"""One bool mask per head name (True = valid; None = all valid), ``[B, T, n]`` or ``[B, n]``,
plus an optional ``"slot_by_op"`` ``[B, num_ops, N]``. Missing heads: a ``KeyError`` naming
them."""

Observation = Tensor | SlotObservation


@runtime_checkable
class PolicyBundle(Protocol):
    """The policy interface a trainer programs against (``isinstance`` works at runtime).

    Shapes: ``features`` ``[B, T, D]`` or ``[B, D]`` (T = 1), ``blueprint_indices`` int64
    ``[B, T, N]`` or ``[B, N]`` (-1 = empty slot). A 2-D call returns tensors without the T
    axis. ``features`` may instead be a `SlotObservation` (``base [B, T, G]``, ``slots
    [B, T, N, F]``, ``slot_types [B, T, N]`` or None, optional ``active``; or without the T
    axis) with ``blueprint_indices=None``. ``masks``: see `Masks`.

    ``episode_starts`` (keyword): bool ``[B, T]`` for `forward`, `evaluate_actions` and
    `get_value` (``[B]`` for 2-D features), ``[B]`` for `get_action`; True where a new
    episode begins at that step, and the recurrent state is zeroed before it (SB3's
    ``episode_starts``, CleanRL's ``done``). A sequence crossing an episode end then scores
    like its pieces scored separately from zero state.

    Example:
        >>> from slotformer.policy import create_policy
        >>> isinstance(create_policy("lstm", lstm_hidden_dim=32, trunk_dim=32), PolicyBundle)
        True
    """

    # ------------------------------------------------------------------ acting and learning
    def get_action(
        self, features: Observation, blueprint_indices: Tensor | None, masks: Masks,
        hidden: Hidden | None = None, deterministic: bool = False,
        probability_floor: ProbabilityFloor = None, *, episode_starts: Tensor | None = None,
    ) -> ActionResult:
        """One rollout step under inference mode; every returned tensor is ``[B]``.
        ``episode_starts`` ``[B]``: environments whose episode begins at this step."""
        ...

    def forward(
        self, features: Observation, blueprint_indices: Tensor | None, masks: Masks,
        hidden: Hidden | None = None, *, episode_starts: Tensor | None = None,
    ) -> ForwardResult:
        """Masked logits per head, the selected value and the new hidden state."""
        ...

    def evaluate_actions(
        self, features: Observation, blueprint_indices: Tensor | None,
        actions: Mapping[str, Tensor], masks: Masks, hidden: Hidden | None = None,
        probability_floor: ProbabilityFloor = None, aux_stop_gradient: bool = True, *,
        episode_starts: Tensor | None = None,
    ) -> EvalResult:
        """Differentiable log-probs, values and entropies of stored actions (``episode_starts``
        ``[B, T]`` when a stored sequence crosses episode ends)."""
        ...

    def get_q_values(
        self, features: Observation, blueprint_indices: Tensor | None, hidden: Hidden | None = None
    ) -> Tensor:
        """Twin-critic Q values for off-policy methods (raise where unsupported)."""
        ...

    def get_value(
        self, features: Observation, blueprint_indices: Tensor | None,
        hidden: Hidden | None = None, *, episode_starts: Tensor | None = None,
    ) -> Tensor:
        """V(s) for bootstrapping, ``[B, T]`` (``[B]`` for 2-D features)."""
        ...

    def sync_from(self, source: PolicyBundle, tau: float = 0.005) -> None:
        """Polyak update: ``target = tau * source + (1 - tau) * target``."""
        ...

    def initial_hidden(self, batch_size: int) -> Hidden | None:
        """Zero recurrent state for ``batch_size`` sequences (None if not recurrent)."""
        ...

    # ------------------------------------------------------------------ weights and placement
    def state_dict(self) -> dict[str, Any]:
        """The network's state dict (never with a compile prefix)."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Load a state dict produced by `state_dict`."""
        ...

    def to(self, device: torch.device | str) -> PolicyBundle:
        """Move the network (refused once compiled); returns the bundle."""
        ...

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in backward where the network supports it."""
        ...

    def compile(self, mode: str = "default", dynamic: bool = True) -> None:
        """``torch.compile`` the network's entry points (``mode="off"`` does nothing)."""
        ...

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def is_recurrent(self) -> bool: ...
    @property
    def supports_off_policy(self) -> bool: ...
    @property
    def slot_config(self) -> SlotConfig: ...
    @property
    def state_dim(self) -> int: ...
    @property
    def lstm_hidden_dim(self) -> int: ...
    @property
    def network(self) -> nn.Module: ...
    @property
    def is_compiled(self) -> bool: ...
    @property
    def network_type(self) -> str: ...


def protocol_members() -> tuple[str, ...]:
    """Every public method and property a `PolicyBundle` must have, sorted by name."""
    return tuple(sorted(name for name in vars(PolicyBundle) if not name.startswith("_")))
