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


def test_set_validation_inside_block_is_undone_on_exit() -> None:
    set_validation(False)
    with validation(True):
        set_validation(True)
    assert validation_enabled() is False


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
