"""One switch for the input checks that cost a host sync.

Shape, rank and dtype checks read only tensor metadata and always run. Checks that read
tensor *values* (NaN/inf, out-of-range indices, rows with no valid action) force a
device-to-host synchronisation, so they run only while validation is enabled (the default)
and never inside ``torch.compile`` tracing. Switch them off for production rollouts::

    import slotformer
    slotformer.set_validation(False)          # the process-wide default
    with slotformer.validation(False):        # or for a block, in this thread / task only
        ...

A `validation` block is scoped by a `contextvars.ContextVar`: it affects the thread or
asyncio task that enters it (and tasks started inside it), never another thread or task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_ENABLED = True  # the process-wide default (set_validation)
_SCOPED: ContextVar[bool | None] = ContextVar("slotformer_validation", default=None)


def set_validation(enabled: bool) -> None:
    """Enable or disable value checks (those that cost a host sync) by default, for every
    thread and task that is not inside a `validation` block."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    """True when value checks should run now: enabled in this context (the innermost
    `validation` block, else the `set_validation` default) and not traced by torch.compile."""
    if torch.compiler.is_compiling():
        return False
    scoped = _SCOPED.get()
    return _ENABLED if scoped is None else scoped


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Set the validation switch for a block, in this thread or asyncio task only.

    Example:
        >>> with validation(False):
        ...     validation_enabled()
        False
    """
    token = _SCOPED.set(bool(enabled))
    try:
        yield
    finally:
        _SCOPED.reset(token)


def describe_shape(tensor: torch.Tensor) -> str:
    """``tuple(tensor.shape)`` as text, for error messages."""
    return str(tuple(tensor.shape))


def expect(
    name: str,
    value: object,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    floating: bool = False,
    device: torch.device | None = None,
    shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    hint: str = "",
) -> torch.Tensor:
    """State what ``value`` must be; raise ``ValueError`` naming ``name`` if it is not.

    The one way the package checks a tensor argument, metadata only (no host sync): its type,
    then ``dtype`` (one or several; ``floating``: any floating dtype), ``device`` and ``shape``
    (one or several). The message names the argument, what it got and expected, then ``hint``.

    Example:
        >>> expect("op_mask", torch.ones(2, 6, dtype=torch.bool), dtype=torch.bool, shape=(2, 6)).shape
        torch.Size([2, 6])
        >>> expect("op_mask", torch.ones(2, 5, dtype=torch.bool), shape=[(2, 3, 6), (2, 6)])
        Traceback (most recent call last):
        ...
        ValueError: op_mask has shape (2, 5), expected (2, 3, 6) or (2, 6)
    """
    dtypes = None if dtype is None else (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    shapes: list[tuple[Any, ...]] | None = None
    if shape is not None:  # one shape or a sequence of them (sizes may be SymInts under compile)
        one = len(shape) == 0 or not isinstance(shape[0], tuple | list)
        shapes = [tuple(shape)] if one else [tuple(s) for s in shape]  # type: ignore[arg-type]
    if not isinstance(value, torch.Tensor):
        problem = f"must be a torch.Tensor, got {type(value).__name__}"
    elif dtypes is not None and value.dtype not in dtypes:
        problem = f"has dtype {value.dtype}, expected {' or '.join(map(str, dtypes))}"
    elif floating and not value.is_floating_point():
        problem = f"has dtype {value.dtype}, expected a floating dtype"
    elif device is not None and value.device != device:
        problem = f"is on device {value.device}, expected {device}"
    elif shapes is not None and tuple(value.shape) not in shapes and not any(
            # size by size as well: under dynamic compile, dynamo judges tuple membership of
            # symbolic sizes False, but compares the sizes themselves
            len(value.shape) == len(s) and all(a == b for a, b in zip(value.shape, s))
            for s in shapes):
        alternatives = dict.fromkeys(map(str, shapes))  # each once, in order
        problem = f"has shape {describe_shape(value)}, expected {' or '.join(alternatives)}"
    else:
        return value
    raise ValueError(f"{name} {problem}{hint}")


def check_positive_int(name: str, value: Any, below: int | None = None) -> int:
    """``value`` if it is an int >= 1 (not a bool), and < ``below`` when given; otherwise a
    ``ValueError`` naming it."""
    upper = math.inf if below is None else below
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < upper:
        expected = "a positive int" if below is None else f"an int in [1, {below - 1}]"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value
