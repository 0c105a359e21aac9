"""Build the wheel and sdist, install the wheel into a fresh venv, import it from outside the repo.

Offline: the build runs with ``--no-isolation`` against the installed setuptools, and the
fresh venv sees the test interpreter's own site-packages (torch, numpy, pip) through a
``.pth`` file, so the test passes whether pytest runs from a system Python or inside a venv
(``--system-site-packages`` would point at the *base* interpreter, which a venv user's torch
is not in).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "slotformer"
SUBPACKAGES = ("slotformer.layers", "slotformer.networks", "slotformer.policy")

# Never copied into the build tree: VCS data, build outputs (a stale build/lib could leak
# deleted modules into the wheel), caches and environments.
_IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache", ".venv",
    ".benchmarks", ".hypothesis", "runs",
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


def _repo_package_files() -> set[str]:
    """Every .py file (and py.typed) of the package in the repo tree, as posix paths."""
    root = REPO_ROOT / PACKAGE
    files = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    files.add(f"{PACKAGE}/py.typed")
    return files


def _host_site_dirs() -> list[str]:
    """The directories this interpreter imports torch, numpy and pip from (a venv's or the
    system's site-packages), for a fresh venv's ``.pth`` file."""
    import site

    import torch

    dirs = [*site.getsitepackages(), str(Path(torch.__file__).resolve().parents[1])]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _build_command(outdir: Path) -> list[str]:
    command = [sys.executable, "-m", "build", "--wheel", "--sdist", "--no-isolation"]
    if importlib.util.find_spec("wheel") is None:
        # pyproject lists "wheel" in build-system.requires, but setuptools >= 70.1 builds wheels
        # itself (bdist_wheel moved into setuptools), so the dependency check can be skipped.
        import setuptools

        version = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
        assert version >= (70, 1), (
            f"neither `wheel` nor setuptools>=70.1 is installed (setuptools "
            f"{setuptools.__version__}); install one to build offline"
        )
        command.append("--skip-dependency-check")
    return [*command, "--outdir", str(outdir), "."]


def test_wheel_and_sdist_build_install_and_import(tmp_path: Path) -> None:
    assert importlib.util.find_spec("build") is not None, "`build` is needed (pip install build)"

    # Build from a copy of the repo tree so the shared working tree gets no build/ or egg-info.
    source = tmp_path / "src"
    shutil.copytree(REPO_ROOT, source, ignore=_IGNORED)
    dist = tmp_path / "dist"
    _run(_build_command(dist), cwd=source)
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    wheel, sdist = wheels[0], sdists[0]

    # The wheel holds every module of the repo's package (subpackages included) and nothing
    # outside the package and its dist-info (no tests/, benchmarks/, examples/).
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    expected = _repo_package_files()
    assert expected <= members, f"missing from the wheel: {sorted(expected - members)}"
    for sub in SUBPACKAGES:
        assert f"{sub.replace('.', '/')}/__init__.py" in members
    dist_info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/"
    stray = sorted(m for m in members if not m.startswith((f"{PACKAGE}/", dist_info)))
    assert not stray, f"unexpected files in the wheel: {stray}"

    # The sdist carries the license, readme, build config and the package.
    with tarfile.open(sdist) as archive:
        sdist_members = set(archive.getnames())
    top = sdist.name.removesuffix(".tar.gz")
    for name in ("LICENSE", "README.md", "pyproject.toml"):
        assert f"{top}/{name}" in sdist_members, f"{name} is missing from the sdist"
    missing_sources = sorted(f for f in expected if f"{top}/{f}" not in sdist_members)
    assert not missing_sources, f"missing from the sdist: {missing_sources}"

    # A fresh venv that sees this interpreter's packages (after its own); this pip installs.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path
    ).stdout.strip()
    (Path(venv_site) / "host_packages.pth").write_text("\n".join(_host_site_dirs()) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = (
        "import importlib, importlib.metadata, json, pathlib, slotformer\n"
        f"subs = {{n: importlib.import_module(n).__file__ for n in {SUBPACKAGES!r}}}\n"
        "print(json.dumps({'file': slotformer.__file__, 'subs': subs,"
        " 'version': slotformer.__version__,"
        " 'dist_version': importlib.metadata.version('slotformer')}))\n"
    )
    report = json.loads(_run([str(python), "-c", probe], cwd=outside).stdout.strip().splitlines()[-1])

    installed = Path(report["file"]).resolve().parent
    assert installed.is_relative_to(venv.resolve()), f"imported from {installed}, not the venv"
    assert not installed.is_relative_to(REPO_ROOT), "imported the repo tree, not the wheel"
    assert (installed / "py.typed").is_file()
    for name, path in report["subs"].items():
        assert Path(path).resolve().is_relative_to(installed), f"{name} imported from {path}"
    for relative in expected:
        assert (installed.parent / relative).is_file(), f"{relative} not installed"
    assert report["version"] == report["dist_version"], (
        f"slotformer.__version__={report['version']} but the wheel metadata says "
        f"{report['dist_version']}"
    )
