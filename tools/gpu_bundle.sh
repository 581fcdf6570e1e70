#!/usr/bin/env bash
# Builds the lean CUDA configuration of Caffe, with cuDNN (own build tree
# build-cuda-cudnn/) and without (build-cuda-lean/), and packs them into a
# self-contained, relocatable folder for a GPU machine that has no Debian
# packages (issue 16; shared/reference/BUILD_FACTS.md, "Carrying a CUDA build
# to the GPU machine"): OUT/ and OUT.tar.xz.
#
# usage: tools/gpu_bundle.sh [--cpu] [--from BUILD_DIR] [--inputs DIR|--no-inputs]
#                            [--no-cudnn|--no-fallback] [--build-only] [--no-tar] OUT
#   (default)         build build-cuda-cudnn/ (CUDA sm_90, cuDNN 9 from the headers and
#                     API library tools/cudnn_headers.py caches, no OpenCV/LevelDB/
#                     pycaffe/Python layer, Debian's reference libblas3) and
#                     build-cuda-lean/ (the same without cuDNN); pack the first, and the
#                     second's programs and libcaffe as nocudnn/: the launcher runs them
#                     where libcudnn does not load (libcudnn itself is not packed: the GPU
#                     machine's nvidia-cudnn wheel has it, as cuBLAS). The check times
#                     "without cuDNN" with engine: CAFFE copies of its nets
#   --no-cudnn        build and pack build-cuda-lean/ only (no cuDNN)
#   --no-fallback     build and pack build-cuda-cudnn/ only (no nocudnn/)
#   --cpu             pack a CPU-only build instead: BUILD_DIR (default build/, the
#                     setup's build, used as is; nothing is built) - the relocation
#                     test of tests/test_gpu_bundle.py
#   --from BUILD_DIR  pack this build tree (with a caffe-build/ inside) as is
#   --build-only      build build-cuda-lean/ and stop
#   --inputs DIR      the check's inputs, made by tools/gpu_check_inputs.py (default:
#                     made now into BUILD_DIR/gpu-check-inputs with .venv and build/)
#   --no-inputs       a bundle without inputs/
#   --no-tar          no OUT.tar.xz (xz of a large CPU bundle takes minutes)
#
# OUT holds: bin/ (caffe, test.testbin, upgrade_net_proto_text), lib/ (libcaffe
# and the runtime closure less what every GPU machine has: glibc, libstdc++,
# libgcc_s, libz; CUDA's libraries come from the machine's wheels/toolkit),
# run (the launcher: `OUT/run caffe ...` sets the library path for that command
# only), src/caffe/test/test_data/ (what test.testbin reads: run it from OUT),
# python/caffe/proto/caffe_pb2.py (protoc's, loads without pycaffe),
# python/google/protobuf (.venv's protobuf runtime, used pure-Python), inputs/
# (tools/gpu_check.sh's, from tools/gpu_check_inputs.py), MANIFEST.tsv (file,
# origin Debian package, bytes) and BUNDLE.json.
# Every ELF is stripped and its RUNPATH rewritten to $ORIGIN-relative; the
# check that no symbol version is newer than GLIBC 2.36 / GLIBCXX_3.4.30
# (gcc 12) / CXXABI_1.3.13 fails the script.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

mode=cuda from="" build_only=0 tar=1 out="" inputs="" no_inputs=0 cudnn=1 fallback=1 fallback_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) mode=cpu ;;
    --from) from=$2; shift ;;
    --inputs) inputs=$2; shift ;;
    --no-inputs) no_inputs=1 ;;
    --no-cudnn) cudnn=0 ;;
    --no-fallback) fallback=0 ;;
    --build-only) build_only=1 ;;
    --no-tar) tar=0 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_bundle: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_bundle: one OUT only" >&2; exit 2; }; out=$1 ;;
  esac
  shift
done
[ -n "$out" ] || [ "$build_only" = 1 ] || { echo "usage: tools/gpu_bundle.sh [--cpu] [--from BUILD_DIR] [--no-tar] OUT" >&2; exit 2; }

step() { echo "== gpu_bundle: $* ($(date +%H:%M:%S))" >&2; }

# Upstream gtests of every layer type our generated nets use (beside the
# default list and our own tests, which CMakeLists.txt adds).
LEAN_TESTS="pooling_layer,convolution_layer,deconvolution_layer,inner_product_layer,euclidean_loss_layer,softmax_with_loss_layer,net,gradient_based_solver,reshape_layer,dropout_layer,neuron_layer,upgrade_proto"
LEAN_TESTS+=",accuracy_layer,batch_norm_layer,scale_layer,bias_layer,eltwise_layer,slice_layer,concat_layer,split_layer,lrn_layer,softmax_layer,power_layer,flatten_layer,sigmoid_cross_entropy_loss_layer,data_layer,maxpool_dropout_layers,im2col_kernel"

# Debian's reference BLAS (libblas3: 448 KB, exports the cblas_* Caffe calls)
# instead of OpenBLAS (35 MiB): the GPU does the heavy BLAS work there.
reference_blas() {
  local sys=/usr/lib/x86_64-linux-gnu/blas/libblas.so.3
  if [ -e "$sys" ]; then echo "$sys"; return; fi
  local dir=$here/build-cuda-lean/deps
  if [ ! -e "$dir/root/usr/lib/x86_64-linux-gnu/blas/libblas.so.3" ]; then
    mkdir -p "$dir"
    (cd "$dir" && rm -f libblas3_*.deb && apt-get download -q libblas3 >&2) ||
      { echo "gpu_bundle: cannot get Debian's libblas3 (apt-get download libblas3)" >&2; exit 1; }
    dpkg-deb -x "$dir"/libblas3_*.deb "$dir/root"
  fi
  echo "$dir/root/usr/lib/x86_64-linux-gnu/blas/libblas.so.3"
}

# cuDNN's headers and API library (~1 MB), as tools/test.sh caches them: enough
# to compile and link; the GPU machine's wheel supplies the rest at run time.
cudnn_root() {
  local dir=${RECON_DEC_CUDNN_HEADERS:-${XDG_CACHE_HOME:-$HOME/.cache}/recon-dec/cudnn}
  if [ ! -e "$dir/include/cudnn.h" ]; then
    "$here/.venv/bin/python" tools/cudnn_headers.py "$dir" >&2 ||
      { echo "gpu_bundle: cannot fetch cuDNN's headers into $dir (tools/cudnn_headers.py)" >&2; exit 1; }
  fi
  echo "$dir"
}

build_tree() {  # build_tree DIR [extra cmake args]: the lean CUDA configuration
  local dir=$1; shift
  local blas; blas=$(reference_blas)
  step "configure $dir (CUDA sm_90, lean, BLAS $blas $*)"
  mkdir -p "$dir"
  cmake -S . -B "$dir" -DRECON_DEC_CUDA=ON -DRECON_DEC_CUDA_ARCH=90 \
        -DRECON_DEC_LINK_VENV=OFF -DRECON_DEC_LEAN=ON \
        "-DRECON_DEC_BLAS_LIBRARY=$blas" "-DRECON_DEC_CAFFE_TESTS=$LEAN_TESTS" \
        -DRECON_DEC_PYTHON="$here/.venv/bin/python" "$@" > "$dir/configure.log" 2>&1 ||
    { tail -40 "$dir/configure.log" >&2; echo "gpu_bundle: configure failed ($dir/configure.log)" >&2; exit 1; }
  step "build (log: $dir/build.log)"
  cmake --build "$dir" > "$dir/build.log" 2>&1 ||
    { grep -E -B2 -A6 'error|Error' "$dir/build.log" | tail -60 >&2; echo "gpu_bundle: build failed ($dir/build.log)" >&2; exit 1; }
}

if [ "$mode" = cuda ] && [ -z "$from" ]; then
  if [ "$cudnn" = 1 ]; then
    from=$here/build-cuda-cudnn
    build_tree "$from" -DRECON_DEC_CUDNN=ON "-DRECON_DEC_CUDNN_ROOT=$(cudnn_root)"
    if [ "$fallback" = 1 ]; then
      fallback_dir=$here/build-cuda-lean
      build_tree "$fallback_dir" -DRECON_DEC_CUDNN=OFF
    fi
  else
    from=$here/build-cuda-lean
    build_tree "$from" -DRECON_DEC_CUDNN=OFF
  fi
fi
[ "$build_only" = 1 ] && { step "built $from"; exit 0; }
[ -n "$from" ] || from=$here/build
from=$(cd "$from" && pwd)

if [ -z "$inputs" ] && [ "$no_inputs" = 0 ]; then
  inputs=$from/gpu-check-inputs
  step "inputs of tools/gpu_check.sh -> $inputs"
  "$here/.venv/bin/python" tools/gpu_check_inputs.py "$inputs" --caffe "$here/build/caffe-build/tools/caffe"
fi

step "pack $from -> $out"
args=(--build "$from" --out "$out" --mode "$mode")
[ -n "$fallback_dir" ] && args+=(--fallback "$fallback_dir")
# the protobuf runtime for the bundle's caffe_pb2 (bench --torch-only on the GPU machine)
protobuf=$("$here/.venv/bin/python" -c 'import os, google.protobuf as p; print(os.path.dirname(p.__file__))') ||
  { echo "gpu_bundle: .venv has no google.protobuf (tools/setup.sh)" >&2; exit 1; }
args+=(--protobuf "$protobuf")
[ -n "$inputs" ] && args+=(--inputs "$inputs")
[ "$tar" = 1 ] && args+=(--tar)
exec python3 "$here/tools/gpu_bundle.py" "${args[@]}"
