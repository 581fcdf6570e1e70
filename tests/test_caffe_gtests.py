"""Runs Caffe's gtest binary (our layers' tests plus the upstream tests of
what recon-dec relies on) against our patched build, CPU mode."""
import re
import subprocess

import pytest

from conftest import BUILD

TESTBIN = BUILD / "caffe-build" / "test" / "test.testbin"
SOURCE_ROOT = BUILD / "caffe-src"  # upstream tests expect to run from here


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


def test_unpooling_gtests():
    # 11 tests x {float, double} on the CPU, gradient checks included
    passed, out = run_gtests("UnpoolingLayerTest*:-*GPU*")
    assert passed == 22, out[-3000:]
    for name in ("TestGradientKnownSwitches", "TestGradientFixedSwitches",
                 "TestRoundTrip", "TestKnownSwitches3x3Overlap"):
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
