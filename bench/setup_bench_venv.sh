#!/bin/sh
# Creates .venv-bench for the benchmarks that compare against PyTorch
# (bench/bench_vs_pytorch.py): a venv of the same interpreter as .venv that
# also sees .venv's packages (pycaffe, numpy, recon_dec) through a .pth file,
# with bench/requirements.txt (torch, CPU) installed into it alone. .venv and
# its requirements are not touched. Run after tools/setup.sh:
#
#   sh bench/setup_bench_venv.sh && .venv-bench/bin/python bench/bench_vs_pytorch.py --standard
set -eu
cd "$(dirname "$0")/.."
test -x .venv/bin/python || { echo "bench/setup_bench_venv.sh: .venv missing: run tools/setup.sh first" >&2; exit 2; }
base=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
"$base" -m venv .venv-bench
echo '*' > .venv-bench/.gitignore  # the venv ignores itself (as Python 3.13's venv does)
main_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bench_site=$(.venv-bench/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a plain path line) so that .venv's own .pth files (pycaffe,
# the editable recon_dec) are processed too; .venv-bench's packages come first
echo "import site; site.addsitedir('$main_site')" > "$bench_site/zz_recon_dec_main_venv.pth"
.venv-bench/bin/pip install -q -r bench/requirements.txt
.venv-bench/bin/python -c 'import torch, caffe, recon_dec; print("torch", torch.__version__, "+ pycaffe + recon_dec: ok")'
