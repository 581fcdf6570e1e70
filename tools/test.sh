#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up the machine and builds
# (tools/setup.sh), then runs pytest, which also runs Caffe's gtests for our
# layers and the upstream layers we rely on, and compiles our CUDA layers for
# sm_90 when nvcc is present. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== test: nvcc found; cuBLAS/cuRAND headers for the CUDA compile check"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-cuda.txt
fi
echo "== test: pytest ($(date +%H:%M:%S))"
exec .venv/bin/python -m pytest -q --timeout=1200 tests "$@"
