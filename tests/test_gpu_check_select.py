"""Which gtest instances tools/gpu_check.py runs on the GPU (issue 16). The
first H100 run (2026-11-27) selected only the *GPU* suites: Caffe's bundled
gtest lists no "# TypeParam", so the GPU instances of typed suites were
missed, and CuDNNDeconvolutionLayerTest's CPU instances ran instead."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

# an excerpt of the CUDA test binary's --gtest_list_tests, as printed on the H100
CUDA_LISTING = """Cuda number of devices: 1
Current device id: 0
AccuracyLayerTest/0.
  TestSetup
AccuracyLayerTest/1.
  TestSetup
AccuracyLayerTest/2.
  TestSetup
AccuracyLayerTest/3.
  TestSetup
CuDNNConvolutionLayerTest/0.
  TestGradientCuDNN
CuDNNConvolutionLayerTest/1.
  TestGradientCuDNN
CuDNNDeconvolutionLayerTest/0.
  TestGradient
CuDNNDeconvolutionLayerTest/1.
  TestGradient
CuDNNDeconvolutionLayerTest/2.
  TestGradient
CuDNNDeconvolutionLayerTest/3.
  TestGradient
FilterNetTest.
  TestNoFilter
Im2colKernelTest/0.
  TestGPU
Im2colKernelTest/1.
  TestGPU
CpuGemmSplitTest/0.
  TestSplitMatchesSerial
CpuGemmSplitTest/1.
  TestSplitMatchesSerial
UnpoolingLayerTest/0.
  TestGradientKnownSwitches
UnpoolingLayerTest/1.
  TestGradientKnownSwitches
UnpoolingLayerTest/2.
  TestGradientKnownSwitches
UnpoolingLayerTest/3.
  TestGradientKnownSwitches
UnpoolingLayerGPUTest/0.
  TestForwardKnown
UnpoolingLayerGPUTest/1.
  TestForwardKnown
"""
OURS = {"CpuGemmSplitTest", "UnpoolingLayerTest", "UnpoolingLayerGPUTest"}


def test_ours_on_gpu_are_the_device_instances_and_gpu_suites():
    assert gpu_check.select_suites(CUDA_LISTING, OURS, True, cpu=False) == [
        "UnpoolingLayerTest/2.*", "UnpoolingLayerTest/3.*",
        "UnpoolingLayerGPUTest/0.*", "UnpoolingLayerGPUTest/1.*"]


def test_upstream_on_gpu_skips_the_cpu_instances_of_cudnn_deconvolution():
    assert gpu_check.select_suites(CUDA_LISTING, OURS, False, cpu=False) == [
        "AccuracyLayerTest/2.*", "AccuracyLayerTest/3.*",
        "CuDNNConvolutionLayerTest/0.*", "CuDNNConvolutionLayerTest/1.*",
        "CuDNNDeconvolutionLayerTest/2.*", "CuDNNDeconvolutionLayerTest/3.*",
        "Im2colKernelTest/0.*", "Im2colKernelTest/1.*"]


def test_cpu_dry_run_takes_the_rest():
    assert gpu_check.select_suites(CUDA_LISTING, OURS, True, cpu=True) == [
        "CpuGemmSplitTest/0.*", "CpuGemmSplitTest/1.*",
        "UnpoolingLayerTest/0.*", "UnpoolingLayerTest/1.*"]
    # a CPU-only build instantiates typed suites twice: all of them are CPU
    cpu_listing = "UnpoolingLayerTest/0.\n  TestA\nUnpoolingLayerTest/1.\n  TestA\n"
    assert gpu_check.select_suites(cpu_listing, OURS, True, cpu=True) == [
        "UnpoolingLayerTest/0.*", "UnpoolingLayerTest/1.*"]
    assert gpu_check.select_suites(cpu_listing, OURS, True, cpu=False) == []
