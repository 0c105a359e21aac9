"""Masked categorical distributions: the single home of the action-distribution math.

Every head of every network turns ``logits [..., n]`` plus a bool ``mask [..., n]``
(True = valid) into log-probabilities, samples, log-probs and normalised entropies through
the functions below. They all

* compute in fp32 whatever the logits' dtype (fp32, fp16, bf16), on the same code path at
  rollout and at update, so the PPO ratio at epoch 0 is 1 up to fp32 rounding (see
  `slotformer.networks.core` for what is exact and what is within a tolerance);
* use the mask explicitly: ``MASKED_LOGIT_VALUE`` is only what the networks *return* as
  ``"{head}_logits"``; the distribution never relies on it, so valid logits near or below
  -1e4 still give correct probabilities;
* give masked actions a log-prob of exactly ``-inf`` and never produce NaN (not even for a
  row without any valid action while validation is off), with finite gradients w.r.t. the
  valid logits;
* accept any leading shape (``[B, n]``, ``[B, T, n]``, ...), cost no host sync while
  validation is off, and trace under ``torch.compile(fullgraph=True)``.

Example::

    >>> import torch
    >>> from slotformer.distributions import MaskedCategorical
    >>> logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[True, True, False], [False, True, False]])
    >>> dist = MaskedCategorical(logits, mask)
    >>> dist.mode.tolist()
    [1, 1]
    >>> dist.entropy()[1].item()              # one valid action: exactly 0
    0.0
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from slotformer.validation import describe_shape, expect, validation_enabled

__all__ = [
    "LOG_PROB_MIN",
    "MASKED_LOGIT_VALUE",
    "InvalidStateMachineError",
    "MaskedCategorical",
    "check_logits_and_mask",
    "gather_log_prob",
    "greedy_actions",
    "log_prob_of",
    "mask_logits",
    "masked_log_probs",
    "normalised_entropy",
    "sample_actions",
]

MASKED_LOGIT_VALUE: float = -1e4
"""Finite fill for invalid logits: representable in fp16/bf16, no inf arithmetic under compile."""

LOG_PROB_MIN: float = -100.0
"""The log-prob `evaluate_actions` gives a stored action its mask forbids (validation off):
finite, so a PPO ratio stays finite (the reference's value). Valid actions keep theirs."""

# The floor is raised by this relative margin so that ``exp(log(p))`` in fp32 (relative error
# below 4e-6 over the normal range) still lands at or above the promised minimum probability.
_FLOOR_MARGIN = 1e-4
_FLOOR_MAX_MASS = 0.99  # the floor never takes more than 99% of a row's probability mass
_FP32_TINY = torch.finfo(torch.float32).tiny


FLOOR_MODES = ("clip", "mix")
"""How a probability floor is applied (see `masked_log_probs`)."""


class InvalidStateMachineError(RuntimeError):
    """A distribution row has no valid action: the environment's action masks are broken."""


def _check_metadata(logits: Tensor, mask: Tensor | None, name: str) -> None:
    """Dtype/shape/device checks; read metadata only, so they are free and always run."""
    if not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError(
            f"{name} must be a floating-point tensor [..., n] (at least one dimension), got "
            f"dtype {logits.dtype} and shape {describe_shape(logits)}"
        )
    if mask is not None and (
        mask.dtype != torch.bool or mask.shape != logits.shape or mask.device != logits.device
    ):  # one message stating every expected and actual property
        raise ValueError(
            f"mask for {name} must be torch.bool (True = valid) with exactly the logits' shape "
            f"{describe_shape(logits)} on their device {logits.device}, got {mask.dtype} "
            f"{describe_shape(mask)} on {mask.device}"
        )


def check_logit_values(logits: Tensor, mask: Tensor | None, name: str) -> None:
    """The value checks of `check_logits_and_mask` alone (NaN/inf, rows with no valid
    action; one host sync for all three counts), for callers whose metadata is checked."""
    empty_rows_t = (
        torch.zeros((), dtype=torch.int64, device=logits.device) if mask is None
        else (~mask.any(dim=-1)).sum()
    )
    counts = [torch.isnan(logits).sum(), torch.isinf(logits).sum(), empty_rows_t]
    nan_count, inf_count, empty_rows = torch.stack(counts).tolist()
    if nan_count or inf_count:
        raise ValueError(
            f"{name} of shape {describe_shape(logits)} must be finite, "
            f"got {nan_count} NaN and {inf_count} inf values"
        )
    if empty_rows:
        raise InvalidStateMachineError(
            f"{name}: {empty_rows} row(s) of the mask (shape {describe_shape(logits)}) have no "
            "valid action; every row needs at least one True entry"
        )


def check_logits_and_mask(logits: Tensor, mask: Tensor | None, name: str = "logits") -> None:
    """Validate ``logits [..., n]`` (any float dtype) and their ``mask`` (bool ``[..., n]``,
    True = valid; None = all valid); ``name`` is the logits' name in error messages.

    Metadata checks (floating dtype, mask is ``torch.bool`` with exactly the logits' shape
    and device) always run. Value checks run only when ``validation_enabled()``: NaN or inf
    in the logits raise ``ValueError`` with both counts; rows whose mask is all False raise
    ``InvalidStateMachineError`` naming how many rows.

    Example::

        >>> check_logits_and_mask(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
    """
    _check_metadata(logits, mask, name)
    if validation_enabled():
        check_logit_values(logits, mask, name)


def _check_floor(min_prob: float | None, floor_mode: str) -> float:
    """The floor as a Python float (0.0 = no floor), after checking ``floor_mode`` and that
    ``min_prob`` lies in [0, 1) or is None."""
    if floor_mode not in FLOOR_MODES:
        raise ValueError(f"floor_mode must be one of {list(FLOOR_MODES)}, got {floor_mode!r}")
    if min_prob is None:
        return 0.0
    number = isinstance(min_prob, (int, float)) and not isinstance(min_prob, bool)
    if not number or not 0.0 <= min_prob < 1.0:  # also rejects NaN
        raise ValueError(f"min_prob must be a Python float in [0, 1) or None, got {min_prob!r}")
    return float(min_prob)


def mask_logits(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Set invalid logits to ``MASKED_LOGIT_VALUE``; what networks return as ``"{head}_logits"``.

    ``logits [..., n]`` (any float dtype), ``mask [..., n]`` bool (True = valid; None = all
    valid: logits returned unchanged) -> ``[..., n]`` in the logits' dtype.

    Example::

        >>> mask_logits(torch.zeros(1, 3), torch.tensor([[True, False, True]])).tolist()
        [[0.0, -10000.0, 0.0]]
    """
    _check_metadata(logits, mask, "logits")
    if mask is None:
        return logits
    return logits.masked_fill(~mask, MASKED_LOGIT_VALUE)


def masked_log_probs(
    logits: Tensor, mask: Tensor | None, min_prob: float | None = None, floor_mode: str = "clip"
) -> Tensor:
    """Normalised fp32 log-probabilities of a masked categorical, with an optional floor.

    Valid entries are finite, masked entries exactly ``-inf``. A row without any valid entry
    (an error that `check_logits_and_mask` reports while validation is on) falls back to
    action 0 as its only valid action: log-prob 0 there and ``-inf`` elsewhere, so sampling
    picks 0, its log-prob and entropy are 0 and no gradient flows through the row (never
    ``-inf`` for the chosen action, never NaN).

    The floor ``min_prob=f`` applies to rows with ``k >= 2`` valid actions, at
    ``fl = min(f, 0.99 / k)``; a row with one valid action keeps log-prob exactly 0:

    * ``floor_mode="clip"`` (the default, the reference network's): valid actions whose
      probability is below ``fl`` are raised to it and the others scaled down to make
      room, ``p'_i = p_i (1 - u fl) / sum_{p_j >= fl} p_j`` for the ``u`` raised ones. A
      no-op when every valid action is at or above ``fl``. One pass, as the reference: an
      action just above ``fl`` can end slightly below it after the scaling.
    * ``floor_mode="mix"``: a mixture with the uniform distribution over valid actions,
      ``p' = fl + (1 - k fl) p``, with ``fl`` raised by a 1e-4 relative margin so that
      ``exp(log_probs) >= fl`` holds despite fp32 rounding. Every valid action gets the
      floor, and every probability moves.

    Args:
        logits: ``[..., n]`` any float dtype (upcast to fp32 first).
        mask: ``[..., n]`` bool, True = valid; None = all valid.
        min_prob: probability floor in [0, 1); None or 0 = no floor.
        floor_mode: one of `FLOOR_MODES`.

    Returns:
        ``[..., n]`` fp32 log-probabilities.

    Example::

        >>> mask = torch.tensor([[True, True, False]])
        >>> lp = masked_log_probs(torch.tensor([[0.0, 50.0, 1.0]]), mask, min_prob=0.05)
        >>> [round(p, 4) for p in lp.exp()[0].tolist()]
        [0.05, 0.95, 0.0]
        >>> lp = masked_log_probs(torch.log(torch.tensor([[0.7, 0.3, 0.1]])), mask, 0.1)
        >>> [round(p, 4) for p in lp.exp()[0].tolist()]    # every valid p >= 0.1: unchanged
        [0.7, 0.3, 0.0]
    """
    _check_metadata(logits, mask, "logits")
    return _masked_log_probs(logits, mask, _check_floor(min_prob, floor_mode), floor_mode)


def _masked_log_probs(
    logits: Tensor, mask: Tensor | None, floor: float | Tensor, floor_mode: str = "clip"
) -> Tensor:
    """`masked_log_probs` without its checks (the policy step's: its callers checked the
    inputs). ``floor`` is a float, or a tensor broadcastable to ``[..., 1]`` (a floor per
    row; rows at 0 get no floor)."""
    logits_fp32 = logits.float()  # [..., n]
    n = logits.shape[-1]

    if mask is None:
        log_probs = torch.log_softmax(logits_fp32, dim=-1)
        if floor == 0.0 or n <= 1:
            return log_probs
        floor_eff = min(max(floor, _FP32_TINY), _FLOOR_MAX_MASS / n)  # a Python scalar
        if floor_mode == "clip":
            return _clip_floor(log_probs, None, floor_eff)
        floor_eff *= 1.0 + _FLOOR_MARGIN
        return torch.log(floor_eff + (1.0 - n * floor_eff) * log_probs.exp())

    invalid = ~mask  # [..., n]
    # A row with no valid entry falls back to action 0 (see masked_log_probs); all -inf, one
    # bad row would make the whole minibatch's loss NaN.
    empty_row = invalid.all(dim=-1, keepdim=True)  # [..., 1]
    first = torch.arange(n, device=mask.device) == 0  # [n]
    invalid = invalid & ~(empty_row & first)  # [..., n]
    filled = logits_fp32.masked_fill(invalid, float("-inf"))
    log_probs = torch.log_softmax(filled, dim=-1).masked_fill(invalid, float("-inf"))
    if isinstance(floor, float) and floor == 0.0:
        return log_probs

    num_valid = (~invalid).sum(dim=-1, keepdim=True, dtype=torch.float32)  # [..., 1]
    if isinstance(floor, Tensor):
        floor_row = torch.minimum(_FLOOR_MAX_MASS / num_valid, floor.clamp(min=_FP32_TINY))
        return torch.where(floor > 0, _floored(log_probs, invalid, floor_row, num_valid,
                                               floor_mode), log_probs)
    floor_row = torch.clamp(_FLOOR_MAX_MASS / num_valid, max=max(floor, _FP32_TINY))
    return _floored(log_probs, invalid, floor_row, num_valid, floor_mode)


def _floored(
    log_probs: Tensor, invalid: Tensor, floor_row: Tensor, num_valid: Tensor, floor_mode: str
) -> Tensor:
    """``log_probs [..., n]`` with the floor ``floor_row [..., 1]`` applied (see
    `masked_log_probs`)."""
    if floor_mode == "clip":
        # Rows with a single valid action: that action is at probability 1 >= any floor,
        # so clipping leaves it (log-prob exactly 0).
        return _clip_floor(log_probs, invalid, floor_row)
    # Rows with a single valid action get no floor so that their log-prob stays exactly 0.
    floor_row = torch.where(num_valid > 1, floor_row * (1.0 + _FLOOR_MARGIN), 0.0)
    floored_probs = floor_row + (1.0 - num_valid * floor_row) * log_probs.exp()  # [..., n]
    # Double masking keeps log(0) out of the graph, so gradients stay finite.
    safe_probs = floored_probs.masked_fill(invalid, 1.0)
    return torch.log(safe_probs).masked_fill(invalid, float("-inf"))


def _clip_floor(log_probs: Tensor, invalid: Tensor | None, floor: Tensor | float) -> Tensor:
    """The ``"clip"`` floor: valid probabilities below ``floor`` ``[..., 1]`` raised to it,
    the others scaled to fill the rest of the mass (see `masked_log_probs`)."""
    probs = log_probs.exp()  # [..., n], 0 where invalid
    under = probs < floor
    if invalid is not None:
        under = under & ~invalid
    over_mass = probs.masked_fill(under, 0.0).sum(dim=-1, keepdim=True)  # [..., 1]
    num_under = under.sum(dim=-1, keepdim=True, dtype=torch.float32)
    scale = (1.0 - num_under * floor) / over_mass.clamp(min=_FP32_TINY)  # [..., 1]
    # The rows with nothing under the floor keep their log-probs exactly (scale is 1 up to
    # rounding there; adding log(1) would only add rounding).
    log_floor = math.log(floor) if isinstance(floor, float) else floor.log()
    floored = torch.where(under, log_floor, log_probs + scale.log())
    floored = torch.where(under.any(dim=-1, keepdim=True), floored, log_probs)
    return floored if invalid is None else floored.masked_fill(invalid, float("-inf"))


def log_prob_of(log_probs: Tensor, actions: Tensor) -> Tensor:
    """Log-probability of the chosen actions (a gather); a masked action gives ``-inf``.

    ``log_probs [..., n]`` fp32 (from ``masked_log_probs``), ``actions [...]`` int64 in
    ``[0, n)`` -> ``[...]`` fp32.

    Example::

        >>> log_prob_of(torch.log(torch.tensor([[0.25, 0.75]])), torch.tensor([1])).exp()
        tensor([0.7500])
    """
    expect("actions", actions, dtype=torch.int64, shape=log_probs.shape[:-1],
           hint=" (log_probs' shape without its last dim)")
    if validation_enabled():
        n = log_probs.shape[-1]
        out_of_range = int(((actions < 0) | (actions >= n)).sum().item())
        if out_of_range:
            raise ValueError(
                f"actions must be in [0, {n}), got {out_of_range} out-of-range value(s)"
            )
    return gather_log_prob(log_probs, actions)


def gather_log_prob(log_probs: Tensor, actions: Tensor) -> Tensor:
    """`log_prob_of` without its checks (same shapes): no host sync even while validation is
    on. For actions in range by construction (sampled or greedy from these ``log_probs``) or
    checked already (the networks check stored actions once, up front).

    Example::

        >>> gather_log_prob(torch.log(torch.tensor([[0.25, 0.75]])), torch.tensor([0])).exp()
        tensor([0.2500])
    """
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def normalised_entropy(log_probs: Tensor, mask: Tensor | None) -> Tensor:
    """Entropy divided by ``ln(num_valid)``: in [0, 1], exactly 0 for a single valid action.

    ``log_probs [..., n]`` fp32 (``-inf`` where masked), ``mask [..., n]`` bool (True = valid;
    None = every log-prob above ``-inf``) -> ``[...]`` fp32, exactly 0 for rows with fewer
    than two valid actions.

    Example::

        >>> normalised_entropy(torch.log(torch.full((1, 4), 0.25)), None)
        tensor([1.])
    """
    if mask is not None:
        expect("mask", mask, dtype=torch.bool, shape=log_probs.shape)
    return _normalised_entropy(log_probs, mask)


def _normalised_entropy(log_probs: Tensor, mask: Tensor | None) -> Tensor:
    """`normalised_entropy` without its mask check (the networks' policy step)."""
    valid = log_probs > float("-inf") if mask is None else mask
    # Zero the masked log-probs before multiplying: 0 * -inf would be NaN (and so its gradient).
    safe_log_probs = log_probs.masked_fill(~valid, 0.0)  # [..., n]
    entropy = -(log_probs.exp() * safe_log_probs).sum(dim=-1)  # [...]
    num_valid = valid.sum(dim=-1, dtype=torch.float32)  # [...]
    normalised = entropy / torch.log(num_valid.clamp(min=2.0))
    return torch.where(num_valid > 1, normalised, 0.0).clamp(0.0, 1.0)


def sample_actions(log_probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample one action per row by an exponential race (Gumbel-max), without host sync.

    ``argmax(log_probs - log(E))`` with ``E ~ Exp(1)`` is an exact categorical sample; unlike
    ``torch.multinomial`` it traces under ``torch.compile``. ``E`` is clamped away from 0 so
    a masked entry (``-inf``) can never win. ``log_probs [..., n]`` (``-inf`` where masked),
    ``generator`` on their device (optional) -> ``[...]`` int64.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> sample_actions(torch.log(torch.tensor([[0.0, 1.0, 0.0]])), g).tolist()
        [1]
    """
    log_probs_fp32 = log_probs.float()
    exponential = torch.empty_like(log_probs_fp32).exponential_(generator=generator)
    race = log_probs_fp32 - exponential.clamp(min=_FP32_TINY).log()  # [..., n]
    return race.argmax(dim=-1)


def greedy_actions(log_probs: Tensor) -> Tensor:
    """Most probable action per row (first one on ties), int64 ``[...]``.

    Example::

        >>> greedy_actions(torch.tensor([[0.1, 0.7, 0.2]]).log()).tolist()
        [1]
    """
    return log_probs.argmax(dim=-1)


class MaskedCategorical:
    """Categorical distribution over masked logits, all math in fp32.

    ``logits``, ``mask``, ``min_prob`` and ``floor_mode`` are `masked_log_probs`'. Metadata
    checks always run; value checks (NaN/inf, rows without a valid action) run when
    ``MaskedCategorical.validate`` and ``validation_enabled()`` are both true.

    Example::

        >>> dist = MaskedCategorical(torch.zeros(2, 4), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool())
        >>> dist.probs[0].tolist()
        [0.5, 0.5, 0.0, 0.0]
        >>> dist.log_prob(dist.sample()).shape
        torch.Size([2])
    """

    validate: ClassVar[bool] = True

    def __init__(
        self,
        logits: Tensor,
        mask: Tensor | None = None,
        min_prob: float | None = None,
        floor_mode: str = "clip",
    ) -> None:
        _check_metadata(logits, mask, "logits")
        if type(self).validate and validation_enabled():
            check_logit_values(logits, mask, "logits")
        self.logits = logits  # [..., n] original dtype
        self.mask = mask  # [..., n] bool or None
        self.min_prob = min_prob
        floor = _check_floor(min_prob, floor_mode)
        self._log_probs = _masked_log_probs(logits, mask, floor, floor_mode)  # [..., n] fp32

    @property
    def log_probs(self) -> Tensor:
        """``[..., n]`` fp32 normalised log-probabilities (``-inf`` where masked)."""
        return self._log_probs

    @property
    def probs(self) -> Tensor:
        """``[..., n]`` fp32 probabilities (0 where masked)."""
        return self._log_probs.exp()

    @property
    def mode(self) -> Tensor:
        """``[...]`` int64 most probable action."""
        return greedy_actions(self._log_probs)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``[...]`` int64 sampled actions (never masked ones)."""
        return sample_actions(self._log_probs, generator)

    def log_prob(self, actions: Tensor) -> Tensor:
        """``[...]`` fp32 log-probability of ``actions`` (int64 ``[...]``)."""
        return log_prob_of(self._log_probs, actions)

    def entropy(self) -> Tensor:
        """``[...]`` fp32 entropy normalised by ``ln(num_valid)``, in [0, 1]."""
        return normalised_entropy(self._log_probs, self.mask)
