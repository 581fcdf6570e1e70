"""Runs Caffe's gtest binary (our layers' tests plus the upstream tests of
what recon-dec relies on) against our patched build, CPU mode.

Every TEST / TEST_F / TYPED_TEST that a caffe_ext test file compiles in (its
#if/#ifdef blocks followed with the build's own -D flags) must be in
`test.testbin --gtest_list_tests` and must pass: a new layer's test cannot be
left out of the build or the run silently."""
import functools
import re
import subprocess

import pytest

from conftest import BUILD, REPO

TESTBIN = BUILD / "caffe-build" / "test" / "test.testbin"
SOURCE_ROOT = BUILD / "caffe-src"  # upstream tests expect to run from here
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


@pytest.mark.parametrize("source", EXT_TEST_FILES, ids=lambda p: p.name)
def test_every_caffe_ext_gtest_passes(source):
    # Suites named *GPU* are left out as in the test below (CPU mode).
    tests = [(s, n) for s, n in compiled_tests(source, build_defines()) if "GPU" not in s]
    if not tests:
        pytest.skip(f"{source.name}: no CPU test compiled into this build")
    suites = sorted({suite for suite, _ in tests})
    _, out = run_gtests(":".join(f"{s}.*:{s}/*:*/{s}/*" for s in suites) + ":-*GPU*")
    not_run = [f"{suite}.{name}" for suite, name in tests
               if not re.search(rf"\[       OK \] (\w+/)?{suite}(/\d+)?\.{name} ", out)]
    assert not not_run, f"did not pass: {not_run}\n{out[-3000:]}"


def test_unpooling_gtests():
    # 12 tests x {float, double} on the CPU, gradient checks included (a
    # CUDA build adds the GPU instances /2, /3 of each: twice as many)
    passed, out = run_gtests("UnpoolingLayerTest*:-*GPU*")
    assert passed == (24 if "CPU_ONLY" in build_defines() else 48), out[-3000:]
    for name in ("TestGradientKnownSwitches", "TestGradientFixedSwitches",
                 "TestRoundTrip", "TestKnownSwitches3x3Overlap",
                 "TestSwitchOutsideWindow"):
        for dtype in (0, 1):  # float, double
            assert f"[       OK ] UnpoolingLayerTest/{dtype}.{name}" in out


@pytest.mark.parametrize("suite", [
    "PoolingLayerTest", "ConvolutionLayerTest", "DeconvolutionLayerTest",
    "InnerProductLayerTest", "EuclideanLossLayerTest", "SoftmaxWithLossLayerTest",
    "NetTest", "SGDSolverTest", "ReshapeLayerTest", "NeuronLayerTest",
    "NetUpgradeTest",
])
def test_upstream_gtests(suite):
    passed, _ = run_gtests(f"{suite}*:-*GPU*")
    assert passed >= 3
