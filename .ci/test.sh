#!/usr/bin/env bash
# Installs slotformer with its dev extras, then lints, type-checks, runs the unit tests and
# the docstring examples, and runs the benchmark suites in quick mode so they cannot rot.
# Extra arguments go to the unit-test pytest run (e.g. `bash .ci/test.sh -x -k encoder`).
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install "torch==2.13.0"
python -m pip install -q -e ".[dev]"
ruff check .
mypy slotformer
# Benchmark suites at quick sizes (about 1.5 minutes): they must keep running, not be fast.
python -m pytest benchmarks --quick --threads 1 --benchmark-only -q -p no:cacheprovider
python -m pytest -q --doctest-modules slotformer examples/pick_entity tests "$@"
# The rollout/update parity tests again under settings that change the CPU kernels (thread
# count, ATen's vector ISA, MKL's instruction set), so that a guarantee that holds for one
# kernel only cannot hide (the guarantees: slotformer/networks/core.py). Their own inductor
# cache: a kernel compiled under a forced ISA, if cached, crashes later default-ISA runs.
export TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/slotformer-parity-inductor-cache"
for setting in OMP_NUM_THREADS=1 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 \
        ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2; do
    echo "parity tests with ${setting}"
    env "${setting}" python -m pytest -q -m parity -p no:cacheprovider tests
done
