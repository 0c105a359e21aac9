"""The validation switch: global setter, scoped context manager, and off under torch.compile."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import slotformer
from slotformer.validation import describe_shape, set_validation, validation, validation_enabled

# `slotformer.validation` is the context manager (re-exported), which shadows the submodule
# as an attribute of the package; fetch the module itself from the import system.
validation_module = importlib.import_module("slotformer.validation")


@pytest.fixture(autouse=True)
def _restore_switch() -> Iterator[None]:
    """Leave the process-wide switch as each test found it."""
    previous = validation_module._ENABLED
    yield
    set_validation(previous)


def test_enabled_by_default_in_a_fresh_interpreter() -> None:
    code = "import slotformer; print(slotformer.validation_enabled())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=str(pathlib.Path(slotformer.__file__).parents[1]),  # the tree under test
    )
    assert result.stdout.strip() == "True"


def test_set_validation_toggles_globally() -> None:
    set_validation(False)
    assert validation_enabled() is False
    set_validation(True)
    assert validation_enabled() is True
    set_validation(0)  # type: ignore[arg-type]
    assert validation_enabled() is False  # stored as a real bool


@pytest.mark.parametrize("outer", [True, False])
@pytest.mark.parametrize("inner", [True, False])
def test_context_manager_restores_previous_value(outer: bool, inner: bool) -> None:
    set_validation(outer)
    with validation(inner):
        assert validation_enabled() is inner
    assert validation_enabled() is outer


def test_context_manager_nests() -> None:
    set_validation(True)
    with validation(False):
        with validation(True):
            assert validation_enabled() is True
        assert validation_enabled() is False
    assert validation_enabled() is True


def test_context_manager_restores_after_exception() -> None:
    set_validation(True)
    with pytest.raises(RuntimeError, match="boom"), validation(False):
        assert validation_enabled() is False
        raise RuntimeError("boom")
    assert validation_enabled() is True


def test_set_validation_inside_a_block_sets_the_default_the_block_still_wins() -> None:
    # set_validation is the process-wide default; a validation() block scopes its own value
    # (a block restoring the global on exit was what made one thread's block switch the
    # checks of every other thread).
    set_validation(False)
    with validation(True):
        set_validation(True)
        set_validation(False)
        assert validation_enabled() is True  # the block's own value
    assert validation_enabled() is False  # the default set inside the block stays
    set_validation(True)
    assert validation_enabled() is True


def test_a_block_in_one_thread_does_not_switch_another_thread() -> None:
    import threading

    set_validation(True)
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def worker() -> None:
        with validation(False):
            seen["worker inside"] = validation_enabled()
            entered.set()
            release.wait(timeout=10)
        seen["worker after"] = validation_enabled()

    thread = threading.Thread(target=worker)
    thread.start()
    assert entered.wait(timeout=10)
    seen["main while worker is inside"] = validation_enabled()
    release.set()
    thread.join(timeout=10)
    assert seen == {
        "worker inside": False, "main while worker is inside": True, "worker after": True,
    }


def test_blocks_are_scoped_per_asyncio_task() -> None:
    import asyncio

    set_validation(True)

    async def checker(enabled: bool, started: asyncio.Event, go: asyncio.Event) -> list[bool]:
        with validation(enabled):
            started.set()
            await go.wait()  # the other task enters its block meanwhile
            return [validation_enabled()]

    async def main() -> tuple[list[bool], list[bool], bool]:
        go = asyncio.Event()
        started_off, started_on = asyncio.Event(), asyncio.Event()
        off = asyncio.create_task(checker(False, started_off, go))
        on = asyncio.create_task(checker(True, started_on, go))
        await started_off.wait()
        await started_on.wait()
        outside = validation_enabled()
        go.set()
        return await off, await on, outside

    off, on, outside = asyncio.run(main())
    assert (off, on, outside) == ([False], [True], True)


def test_validation_is_off_inside_a_compile_trace() -> None:
    set_validation(True)

    @torch.compile(fullgraph=True, backend="eager")
    def checked(x: torch.Tensor) -> torch.Tensor:
        # The Python branch is resolved at trace time, so the graph bakes in its value.
        return x + (1.0 if validation_enabled() else 0.0)

    x = torch.zeros(3)
    assert validation_enabled() is True
    assert checked(x).tolist() == [0.0, 0.0, 0.0]  # traced with validation off
    assert (x + (1.0 if validation_enabled() else 0.0)).tolist() == [1.0, 1.0, 1.0]  # eager: on
    assert validation_enabled() is True  # tracing did not flip the global switch


def test_public_names_are_re_exported() -> None:
    assert slotformer.set_validation is set_validation
    assert slotformer.validation is validation
    assert slotformer.validation_enabled is validation_enabled


def test_describe_shape() -> None:
    assert describe_shape(torch.zeros(2, 5, 3)) == "(2, 5, 3)"
    assert describe_shape(torch.tensor(1.0)) == "()"
