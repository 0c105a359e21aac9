"""configure_malloc: an explicit opt-in, checked arguments, a no-op off glibc."""

from __future__ import annotations

import subprocess
import sys

import pytest

import slotformer
from slotformer import allocator


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mmap_threshold": 0}, r"mmap_threshold must be an int in \[1, 2147483647\], got 0"),
        ({"trim_threshold": 2**31}, r"trim_threshold must be .* got 2147483648"),
        ({"mmap_threshold": True}, r"mmap_threshold must be .* got True"),
        ({"mmap_threshold": 1.5}, r"mmap_threshold must be .* got 1.5"),
    ],
)
def test_bad_thresholds_are_rejected_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slotformer.configure_malloc(**kwargs)  # type: ignore[arg-type]


def test_without_glibc_mallopt_it_does_nothing_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    assert slotformer.configure_malloc() is False


def test_it_reports_whether_mallopt_accepted_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def fake_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 0 if param == allocator._M_TRIM_THRESHOLD else 1

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: fake_mallopt)
    assert slotformer.configure_malloc(mmap_threshold=1 << 20, trim_threshold=1 << 21) is False
    assert calls == [(allocator._M_MMAP_THRESHOLD, 1 << 20), (allocator._M_TRIM_THRESHOLD, 1 << 21)]
    calls.clear()
    slotformer.configure_malloc()  # the default: mmap above 1 GiB, never trim (-1)
    assert calls == [(allocator._M_MMAP_THRESHOLD, 1 << 30), (allocator._M_TRIM_THRESHOLD, -1)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_importing_slotformer_changes_no_malloc_setting() -> None:
    # Opt-in only: importing the package must not call mallopt. Run in a fresh interpreter
    # whose ctypes.CDLL records every mallopt call.
    code = (
        "import ctypes\n"
        "calls = []\n"
        "real = ctypes.CDLL\n"
        "class Spy(real):\n"
        "    def __getattr__(self, name):\n"
        "        if name == 'mallopt': calls.append(name)\n"
        "        return super().__getattr__(name)\n"
        "ctypes.CDLL = Spy\n"
        "import slotformer\n"
        "assert calls == [], calls\n"
        "print('applied', slotformer.configure_malloc())\n"
        "assert calls == ['mallopt'], calls\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "applied " in done.stdout
