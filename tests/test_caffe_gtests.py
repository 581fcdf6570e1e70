"""Runs Caffe's gtest binary (our layers' tests plus the upstream tests of
what recon-dec relies on) against our patched build, CPU mode.

Every TEST / TEST_F / TYPED_TEST that a caffe_ext test file compiles in (its
#if/#ifdef blocks followed with the build's own -D flags) must be in
`test.testbin --gtest_list_tests` and must pass: a new layer's test cannot be
left out of the build or the run silently.

Tests are selected by instance: a CUDA build instantiates each typed test on
CPUDevice and GPUDevice (`/0`, `/1` CPU, `/2`, `/3` GPU, as the list's
TypeParam says); the CPU instances always run, the GPU ones (and *GPU*
suites) only where a GPU is present, else they are skipped with a message.
On a CUDA build without a GPU the prefetching data layers' CPU tests are
skipped too: their thread asks the CUDA runtime for the device even in CPU
mode and aborts. RECON_DEC_GTEST_BUILD=DIR runs another build tree's binary
(e.g. build-cuda-lean)."""
import functools
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from conftest import BUILD as _BUILD, REPO

BUILD = pathlib.Path(os.environ.get("RECON_DEC_GTEST_BUILD", _BUILD)).resolve()
TESTBIN = BUILD / "caffe-build" / "test" / "test.testbin"
SOURCE_ROOT = BUILD / "caffe-src"  # upstream tests expect to run from here
# Suites of data layers that prefetch in Caffe's InternalThread, which calls
# cudaGetDevice in a CUDA build whatever the mode (error 35 without a GPU).
PREFETCHING = {"ScaleJitterDataLayerTest", "DataLayerTest", "ImageDataLayerTest"}
NO_DEVICE = ("a CUDA build's prefetching data layer queries the CUDA device even in CPU "
             "mode (InternalThread: cudaGetDevice), which aborts without a GPU; "
             "these run on a machine with one")
# Where Caffe's (Makefile) build keeps test.testbin's compile flags.
FLAGS_MAKE = (BUILD / "caffe-build" / "src" / "caffe" / "test" / "CMakeFiles"
              / "test.testbin.dir" / "flags.make")
EXT_TEST_FILES = sorted(
    [*(REPO / "caffe_ext/src/caffe/test").glob("test_*.cpp"),
     *(REPO / "caffe_ext/src/caffe/test").glob("test_*.cu")])
TEST_RE = re.compile(r"\b(?:TEST|TEST_F|TYPED_TEST|TYPED_TEST_P)\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)")


def run_gtests(gtest_filter):
    if not TESTBIN.exists():
        pytest.fail(f"{TESTBIN} missing: run tools/setup.sh")
    proc = subprocess.run([str(TESTBIN), f"--gtest_filter={gtest_filter}"],
                          cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    passed = re.search(r"\[  PASSED  \] (\d+) tests?", out)
    assert proc.returncode == 0 and passed, out[-6000:]
    assert "FAILED" not in proc.stdout, out[-6000:]
    return int(passed.group(1)), out


@functools.lru_cache(maxsize=None)
def suite_instances():
    """{suite instance as gtest names it ('UnpoolingLayerTest/2', 'NetTest'):
    'gpu' or 'cpu'}, from the list's TypeParam comments and suite names."""
    if not TESTBIN.exists():
        pytest.fail(f"{TESTBIN} missing: run tools/setup.sh")
    proc = subprocess.run([str(TESTBIN), "--gtest_list_tests"], cwd=SOURCE_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    found = {}
    for line in proc.stdout.splitlines():
        entry, _, comment = line.partition("#")
        entry = entry.strip()
        if line.startswith(" ") or not entry.endswith("."):
            continue
        instance = entry.rstrip(".")
        # a cuDNN build's CuDNN* suites are typed on float/double only, GPU-only
        gpu = "GPU" in base_suite(instance) or "GPUDevice" in comment or base_suite(instance).startswith("CuDNN")
        found[instance] = "gpu" if gpu else "cpu"
    return found


@functools.lru_cache(maxsize=None)
def instance_test_counts():
    """{suite instance: number of tests gtest lists under it}."""
    proc = subprocess.run([str(TESTBIN), "--gtest_list_tests"], cwd=SOURCE_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts, instance = {}, None
    for line in proc.stdout.splitlines():
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        if line.startswith(" "):
            counts[instance] = counts.get(instance, 0) + 1
        elif entry.endswith("."):
            instance = entry.rstrip(".")
    return counts


def base_suite(instance):
    """'UnpoolingLayerTest' of 'UnpoolingLayerTest/2' (or of 'Prefix/Suite/0')."""
    return [p for p in instance.split("/") if not p.isdigit()][-1]


def cuda_build():
    return "CPU_ONLY" not in build_defines()


@functools.lru_cache(maxsize=None)
def gpu_present():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0 and "GPU" in proc.stdout


def selection(suites, device):
    """(gtest filter of the `device` instances of the base `suites`, suites
    left out because they need a device this machine lacks). Skips the
    test when a GPU is asked for and there is none."""
    if device == "gpu" and not cuda_build():
        pytest.skip("CPU-only build: no GPU instances")
    if device == "gpu" and not gpu_present():
        pytest.skip("CUDA build, but no GPU on this machine (nvidia-smi -L): the GPU "
                    "instances (/2, /3, *GPU* suites) run on a GPU machine (tools/gpu_check.sh)")
    left_out = set()
    if device == "cpu" and cuda_build() and not gpu_present():
        left_out = set(suites) & PREFETCHING
    chosen = sorted(i for i, d in suite_instances().items()
                    if d == device and base_suite(i) in set(suites) - left_out)
    return ":".join(f"{i}.*" for i in chosen), sorted(left_out)


@functools.lru_cache(maxsize=None)
def build_defines():
    """The macros test.testbin is compiled with (CPU_ONLY, USE_OPENCV, ...)."""
    if not FLAGS_MAKE.exists():
        pytest.fail(f"{FLAGS_MAKE} missing: run tools/setup.sh")
    line = next((l for l in FLAGS_MAKE.read_text().splitlines()
                 if l.startswith("CXX_DEFINES")), "")
    return frozenset(re.findall(r"-D(\w+)", line))


def strip_comments(text):
    """C/C++ comments blanked (newlines kept, so line numbers stay)."""
    def blank(m):
        s = m.group(0)
        return s if s[0] in "\"'" else re.sub(r"[^\n]", " ", s)
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
                  blank, text, flags=re.S)


def evaluate(expr, defines, where):
    """A #if condition made of defined(X), !, &&, ||, parentheses, 0 and 1."""
    py = re.sub(r"defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)",
                lambda m: str((m.group(1) or m.group(2)) in defines), expr)
    py = py.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py)
    unknown = set(re.findall(r"[A-Za-z_]\w*", py)) - {"True", "False", "and", "or", "not"}
    if unknown or re.search(r"[^\w\s()]", py):
        pytest.fail(f"{where}: cannot tell whether '#if {expr}' is compiled in; "
                    "use #ifdef/#ifndef or defined(...)")
    return bool(eval(py, {"__builtins__": {}}))  # noqa: S307 - checked above


def compiled_tests(source, defines):
    """(suite, name) of every test in `source` that the build compiles in."""
    lines = strip_comments(source.read_text()).split("\n")
    defines = set(defines)  # the file's own #define / #undef join in
    stack = []  # per open #if: [some branch taken, this branch active]
    for n, line in enumerate(lines):
        d = re.match(r"\s*#\s*(\w+)\s*(.*?)\s*$", line)
        if not d:
            if not all(active for _, active in stack):
                lines[n] = ""
            continue
        keyword, arg = d.groups()
        where = f"{source.name}:{n + 1}"
        if keyword in ("if", "ifdef", "ifndef"):
            cond = (evaluate(arg, defines, where) if keyword == "if"
                    else (arg in defines) == (keyword == "ifdef"))
            stack.append([cond, cond])
        elif keyword == "elif":
            cond = not stack[-1][0] and evaluate(arg, defines, where)
            stack[-1] = [stack[-1][0] or cond, cond]
        elif keyword == "else":
            stack[-1] = [True, not stack[-1][0]]
        elif keyword == "endif":
            stack.pop()
        elif keyword in ("define", "undef") and all(a for _, a in stack):
            name = re.match(r"\w+", arg).group(0)
            if keyword == "define":
                defines.add(name)
            else:
                defines.discard(name)
        lines[n] = ""
    assert not stack, f"{source.name}: unbalanced #if/#endif"
    return sorted(set(TEST_RE.findall("\n".join(lines))))


@functools.lru_cache(maxsize=None)
def listed_tests():
    """(suite, name) of every test in test.testbin; a suite is the fixture's
    name without gtest's '/N' type index or 'Prefix/' of TYPED_TEST_P."""
    if not TESTBIN.exists():
        pytest.fail(f"{TESTBIN} missing: run tools/setup.sh")
    proc = subprocess.run([str(TESTBIN), "--gtest_list_tests"], cwd=SOURCE_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    listed, suite = set(), None
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        entry = line.split("#")[0].strip()
        if line.startswith(" "):
            listed.add((suite, entry))
        else:
            parts = [p for p in entry.rstrip(".").split("/") if not p.isdigit()]
            suite = parts[-1]
    return frozenset(listed)


def test_parser_finds_every_definition():
    # The parser must see each file's test definitions when no #if hides
    # them, or the checks below would pass on a file it cannot read.
    assert EXT_TEST_FILES, "no caffe_ext/src/caffe/test/test_*.cpp found"
    for source in EXT_TEST_FILES:
        raw = TEST_RE.findall(strip_comments(source.read_text()))
        assert raw, f"{source.name}: no TEST/TEST_F/TYPED_TEST found"


@pytest.mark.parametrize("source", EXT_TEST_FILES, ids=lambda p: p.name)
def test_every_caffe_ext_gtest_is_built(source):
    missing = [f"{suite}.{name}"
               for suite, name in compiled_tests(source, build_defines())
               if (suite, name) not in listed_tests()]
    assert not missing, (
        f"{len(missing)} test(s) of {source.relative_to(REPO)} are not in "
        f"test.testbin --gtest_list_tests: {missing}. Re-run `cmake --build build` "
        "(CMakeLists.txt globs caffe_ext/src/caffe/test/test_*.cpp).")


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("source", EXT_TEST_FILES, ids=lambda p: p.name)
def test_every_caffe_ext_gtest_passes(source, device):
    tests = compiled_tests(source, build_defines())
    if not tests:
        pytest.skip(f"{source.name}: no test compiled into this build")
    suites = sorted({suite for suite, _ in tests})
    gtest_filter, left_out = selection(suites, device)
    if not gtest_filter:
        pytest.skip(f"{source.name}: no {device.upper()} instance in this build"
                    + (f" ({', '.join(left_out)}: {NO_DEVICE})" if left_out else ""))
    _, out = run_gtests(gtest_filter)
    run_instances = [i for i in gtest_filter.replace(".*", "").split(":")]
    not_run = [f"{inst}.{name}" for inst in run_instances
               for suite, name in tests if base_suite(inst) == suite
               and not re.search(rf"\[       OK \] {re.escape(inst)}\.{name} ", out)]
    assert not not_run, f"did not pass: {not_run}\n{out[-3000:]}"
    if left_out:
        pytest.skip(f"passed; {', '.join(left_out)} not run: {NO_DEVICE}")


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_unpooling_gtests(device):
    # every typed test x {float, double}, gradient checks included, per device
    # (a CUDA build has the GPU instances /2, /3 and UnpoolingLayerGPUTest's
    # tests): the counts come from the source and the binary's list, so a
    # build with more instances (cuDNN, another dtype) needs no edit here
    gtest_filter, _ = selection(["UnpoolingLayerTest", "UnpoolingLayerGPUTest"], device)
    passed, out = run_gtests(gtest_filter)
    chosen = gtest_filter.replace(".*", "").split(":")
    typed = len(re.findall(r"^TYPED_TEST\(UnpoolingLayerTest,", (REPO / "caffe_ext/src/caffe/test/"
                                                                 "test_unpooling_layer.cpp").read_text(), re.M))
    counts = instance_test_counts()
    assert typed >= 15 and all(counts[i] == typed for i in chosen if base_suite(i) == "UnpoolingLayerTest")
    assert sum(base_suite(i) == "UnpoolingLayerTest" for i in chosen) == 2  # float, double
    assert passed == sum(counts[i] for i in chosen), out[-3000:]
    first = 0 if device == "cpu" else 2
    for name in ("TestGradientKnownSwitches", "TestGradientFixedSwitches",
                 "TestRoundTrip", "TestKnownSwitches3x3Overlap",
                 "TestSwitchOutsideWindow"):
        for dtype in (first, first + 1):  # float, double
            assert f"[       OK ] UnpoolingLayerTest/{dtype}.{name}" in out


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("suite", [
    "PoolingLayerTest", "ConvolutionLayerTest", "DeconvolutionLayerTest",
    "Im2colLayerTest", "InnerProductLayerTest", "EuclideanLossLayerTest",
    "SoftmaxWithLossLayerTest",
    "NetTest", "SGDSolverTest", "ReshapeLayerTest", "NeuronLayerTest",
    "NetUpgradeTest", "BiasLayerTest",
])
def test_upstream_gtests(suite, device):
    gtest_filter, _ = selection([suite], device)
    if not gtest_filter:
        pytest.skip(f"{suite}: no {device.upper()} instance")
    passed, _ = run_gtests(gtest_filter)
    assert passed >= 3
