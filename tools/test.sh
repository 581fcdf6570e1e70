#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up the machine and builds
# (tools/setup.sh), then runs pytest, which also runs Caffe's gtests for our
# layers and the upstream layers we rely on, and compiles our CUDA layers for
# sm_90 and Caffe's cuDNN sources against cuDNN 9 when nvcc is present. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== test: nvcc found; cuBLAS/cuRAND headers for the CUDA compile check"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-cuda.txt
  # cuDNN's headers + API library (1.4 MB, cached across clones) for the cuDNN
  # compile check, unless the venv has the whole wheel (setup.sh --cudnn);
  # the first time downloads the ~520 MB wheel to a temporary folder.
  cudnn_dir=${RECON_DEC_CUDNN_HEADERS:-${XDG_CACHE_HOME:-$HOME/.cache}/recon-dec/cudnn}
  if [ ! -f "$cudnn_dir/include/cudnn_version.h" ] && ! [ -d .venv/lib/python3*/site-packages/nvidia/cudnn/include ]; then
    echo "== test: cuDNN 9 headers for the cuDNN compile check into $cudnn_dir"
    # no wheel (an index without it, a failed download): the check skips, saying so
    .venv/bin/python tools/cudnn_headers.py "$cudnn_dir" ||
      echo "== test: warning: no cuDNN headers; the cuDNN compile check will be skipped"
  fi
  export RECON_DEC_CUDNN_HEADERS=$cudnn_dir
fi
echo "== test: pytest ($(date +%H:%M:%S))"
exec .venv/bin/python -m pytest -q --timeout=1200 tests "$@"
