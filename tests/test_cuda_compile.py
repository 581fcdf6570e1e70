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


def nvcc_sm90(source, obj, *flags):
    """The CUDA build's nvcc command for one .cu file (sm_90, position independent)."""
    return [NVCC, "-c", str(source), "-o", str(obj), "-std=c++17",
            "-gencode", "arch=compute_90,code=sm_90", "-Xcompiler", "-fPIC", *flags]


def cuda_include():
    """The toolkit's include folder (cuda_runtime.h), for host-compiled sources."""
    path = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
    assert os.path.exists(os.path.join(path, "cuda_runtime.h")), \
        f"no cuda_runtime.h in {path}: set CUDA_HOME to the toolkit nvcc belongs to"
    return path


@pytest.mark.skipif(not os.path.exists(NVCC), reason="no nvcc on this machine")
@pytest.mark.parametrize("source", sorted(glob.glob(str(REPO / "caffe_ext/src/caffe/layers/*.cu"))),
                         ids=os.path.basename)
def test_cu_compiles_for_sm90(tmp_path, source):
    obj = tmp_path / "layer.o"
    cmd = nvcc_sm90(source, obj, *include_flags())
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
    cmd = ["g++", "-fsyntax-only", "-std=c++17", str(source), *defines,
           "-I", str(BUILD / "caffe-src/src"),  # Caffe's bundled gtest
           *include_flags(), "-I", cuda_include()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


# ---[ Caffe's cuDNN code (RECON_DEC_CUDNN) against cuDNN 9, compile only.
# caffe_ext/patches/0007-cudnn8-api.patch ports it from the v7 API: without
# the patch the conv/deconv layers and cudnn_softmax_layer.cpp do not compile.
CUDNN_SOURCES = ["src/caffe/util/cudnn.cpp"] + [
    f"src/caffe/layers/cudnn_{layer}_layer.{ext}"
    for layer in ("conv", "deconv", "lcn", "lrn", "pooling", "relu", "sigmoid", "softmax", "tanh")
    for ext in ("cpp", "cu")]


def cudnn_root():
    """A folder with include/cudnn.h and lib/libcudnn.so.N: $RECON_DEC_CUDNN_HEADERS
    or the cache tools/test.sh fills (tools/cudnn_headers.py), else the whole
    nvidia-cudnn-cu13 wheel in the venv (tools/setup.sh --cudnn). None if none."""
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "recon-dec", "cudnn")
    candidates = [os.environ.get("RECON_DEC_CUDNN_HEADERS"), cache]
    try:
        import nvidia
        candidates += [os.path.join(p, "cudnn") for p in nvidia.__path__]
    except ImportError:
        pass
    for root in filter(None, candidates):
        if (os.path.exists(os.path.join(root, "include", "cudnn_version.h"))
                and glob.glob(os.path.join(root, "lib", "libcudnn.so.[0-9]*"))):
            return root
    return None


def need_cudnn():
    root = cudnn_root()
    if root is None:
        pytest.skip("no cuDNN headers: run tools/test.sh (fetches them with nvcc present), "
                    "python tools/cudnn_headers.py ~/.cache/recon-dec/cudnn, or "
                    "tools/setup.sh --cuda --cudnn")
    return root


def cudnn_api_library(root):
    return sorted(glob.glob(os.path.join(root, "lib", "libcudnn.so.[0-9]*")))[0]


@pytest.mark.skipif(not os.path.exists(NVCC), reason="no nvcc on this machine")
@pytest.mark.parametrize("source", CUDNN_SOURCES, ids=os.path.basename)
def test_caffe_cudnn_source_compiles_against_cudnn9(tmp_path, source):
    root = need_cudnn()
    version = open(os.path.join(root, "include", "cudnn_version.h")).read()
    assert re.search(r"#define CUDNN_MAJOR\s+9\b", version), "expected cuDNN 9 headers"
    path = str(BUILD / "caffe-src" / source)
    obj = tmp_path / "cudnn.o"
    # As the CUDA build compiles them: its -D flags, USE_CUDNN, the cuDNN includes
    defines = [f"-D{d}" for d in sorted(build_defines()) if d != "CPU_ONLY"] + ["-DUSE_CUDNN"]
    includes = include_flags() + ["-I", os.path.join(root, "include")]
    if path.endswith(".cu"):
        cmd = nvcc_sm90(path, obj, *defines, *includes)
    else:
        cmd = ["g++", "-c", path, "-o", str(obj), "-std=c++17", "-fPIC", "-O0", *defines,
               *includes, "-I", cuda_include()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Every cuDNN function the object calls is exported by cuDNN 9's API library
    # (deprecated legacy calls included), so the link and the loader find them.
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True).stdout
    called = set(re.findall(r"\b(cudnn\w+)", undefined))
    if "/layers/" in source:  # util/cudnn.cpp holds constants only
        assert called, "no cuDNN call: was USE_CUDNN honoured?"
    exported = set(re.findall(r" T (cudnn\w+)", subprocess.run(
        ["nm", "-D", "--defined-only", cudnn_api_library(root)],
        capture_output=True, text=True).stdout))
    assert called <= exported, f"not in {cudnn_api_library(root)}: {sorted(called - exported)}"


def test_caffe_cmake_reads_cudnn9_version(tmp_path):
    # Caffe's detect_cuDNN (cmake/Cuda.cmake, patched) on cuDNN 9's headers,
    # which define the version in cudnn_version.h: read from cudnn.h it came
    # out empty and configuring stopped ("cuDNN version >3 is required").
    root = need_cudnn()
    cuda_cmake = (BUILD / "caffe-src/cmake/Cuda.cmake").read_text()
    function = re.search(r"function\(detect_cuDNN\).*?\nendfunction\(\)", cuda_cmake, re.S).group(0)
    script = tmp_path / "detect.cmake"
    script.write_text(f"{function}\n"
                      f"set(CUDA_CUDART_LIBRARY /nonexistent/libcudart.so)\n"
                      f"set(CUDNN_INCLUDE {root}/include CACHE PATH \"\")\n"
                      f"set(CUDNN_LIBRARY {cudnn_api_library(root)} CACHE FILEPATH \"\")\n"
                      "detect_cuDNN()\nmessage(\"version=${CUDNN_VERSION} have=${HAVE_CUDNN}\")\n")
    proc = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"version=9\.\d+\.\d+ have=TRUE", proc.stderr), proc.stderr[-2000:]


def test_gpu_bundle_never_carries_cudnn():
    # The GPU machine's own cuDNN wheel serves at run time (its libcudnn.so.9
    # loads the engine libraries beside it): the bundler leaves all of them out.
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_bundle", REPO / "tools/gpu_bundle.py")
    gpu_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bundle)
    for name in ("libcudnn.so.9", "libcudnn_cnn.so.9", "libcudnn_ops.so.9",
                 "libcudnn_engines_precompiled.so.9", "libcudnn_graph.so.9"):
        assert gpu_bundle.CUDA.match(name), name
