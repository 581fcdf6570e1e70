"""CI has nvcc but no GPU: compile our CUDA layers for sm_90 against the
patched Caffe headers, as the CUDA configuration does, and check the object
holds sm_90 device code for our kernels; and check that our gtest files
compile as in a CUDA build (CPU_ONLY undefined), so their GPU-only tests do
not wait for a GPU machine to be compiled. (The full CUDA build is documented
in the README: tools/setup.sh --cuda.)"""
import glob
import os
import shutil
import re
import subprocess

import pytest

from conftest import BUILD, REPO
from test_caffe_gtests import EXT_TEST_FILES, build_defines

NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


def cuda_includes():
    try:
        import nvidia
    except ImportError:
        return None
    wheel = sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "cu1*")))
    return [f"{wheel[-1]}/include"] if wheel else None


def include_flags():
    extra = cuda_includes()
    if extra is None:
        pytest.fail("cuBLAS/cuRAND headers missing: pip install -r requirements-cuda.txt "
                    "(the README's test command does)")
    dirs = [REPO / "caffe_ext/include", BUILD / "caffe-src/include",
            BUILD / "caffe-build/include",  # generated caffe.pb.h
            BUILD / "caffe-build", "/usr/include/hdf5/serial", "/usr/include/opencv4",
            *extra]
    return [arg for d in dirs for arg in ("-I", str(d))]


@pytest.mark.skipif(not os.path.exists(NVCC), reason="no nvcc on this machine")
@pytest.mark.parametrize("source", sorted(glob.glob(str(REPO / "caffe_ext/src/caffe/layers/*.cu"))),
                         ids=os.path.basename)
def test_cu_compiles_for_sm90(tmp_path, source):
    obj = tmp_path / "layer.o"
    cmd = [NVCC, "-c", source, "-o", str(obj), "-std=c++17",
           "-gencode", "arch=compute_90,code=sm_90", "-Xcompiler", "-fPIC",
           *include_flags()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The fat binary section is there and names the sm_90 ELF of our kernels.
    sections = subprocess.run(["objdump", "-h", str(obj)], capture_output=True, text=True).stdout
    assert ".nv_fatbin" in sections
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout
    kernels = re.findall(r"__global__ void (\w+)", open(source).read())
    assert kernels
    for kernel in kernels:  # a host stub per kernel, for float and double
        for dtype in ("float", "double"):
            assert f"void caffe::{kernel}<{dtype}>(" in symbols, f"{kernel}<{dtype}> missing"


@pytest.mark.skipif(not os.path.exists(NVCC), reason="no nvcc on this machine")
@pytest.mark.parametrize("source", [f for f in EXT_TEST_FILES if f.suffix == ".cpp"],
                         ids=lambda p: p.name)
def test_gtests_compile_for_cuda_build(source):
    # The CPU build's -D flags less CPU_ONLY: the #ifndef CPU_ONLY tests are
    # compiled (syntax and templates; host compiler, as in the CUDA build).
    defines = [f"-D{d}" for d in sorted(build_defines()) if d != "CPU_ONLY"]
    cuda_include = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
    assert os.path.exists(os.path.join(cuda_include, "cuda_runtime.h")), \
        f"no cuda_runtime.h in {cuda_include}: set CUDA_HOME to the toolkit nvcc belongs to"
    cmd = ["g++", "-fsyntax-only", "-std=c++17", str(source), *defines,
           "-I", str(BUILD / "caffe-src/src"),  # Caffe's bundled gtest
           *include_flags(), "-I", cuda_include]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
