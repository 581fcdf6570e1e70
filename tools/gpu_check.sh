#!/usr/bin/env bash
# The one prepared device check of issue 16 (part 4), run on the GPU machine
# as one command from this repository's root, with a bundle made here by
# tools/gpu_bundle.sh (inputs prepared by tools/gpu_check_inputs.py inside it):
#
#   tar xJf gpu-bundle.tar.xz -C /tmp && tools/gpu_check.sh /tmp/gpu-bundle $OUT
#
# usage: tools/gpu_check.sh BUNDLE OUT [--cpu] [--budget S] [--python PY] [--steps a,b]
# Steps, each time-boxed, the whole within --budget (330 s; --cpu 900 s and
# every limit x3), a failed step
# recorded and the rest run on:
#   device_query      nvidia-smi; caffe device_query -gpu 0
#   gtest_ours        our layers' gtests, GPU instances (/2, /3 and *GPU* suites):
#                     Unpooling in every mode with GradientChecker, switch validation
#   gpu_vs_cpu        caffe test of the generated small-VGG nets (baseline, swwae-all)
#                     with the same init.caffemodel, CPU and GPU: outputs equal to 1e-3
#   train             caffe train -gpu 0 of the demo's step-4 net (both variants), loss falls
#   caffe_time        caffe time -gpu 0 of VGG16 baseline and SWWAE-all, 224 px, batch 32:
#                     the default engine (cuDNN in a cuDNN bundle, where libcudnn loads:
#                     `BUNDLE/run --variant`) and the inputs' engine: CAFFE copies
#   unpool_bandwidth  Unpooling (known, fixed) forward/backward vs a device copy (Power)
#   pytorch           bench/bench_vs_pytorch.py --torch-only --device cuda on the same
#                     VGG16 nets (the bundle's caffe_pb2 and pure-Python protobuf), beside
#                     caffe time's; plain PyTorch VGG16 and a torch device-to-device copy
#   gtest_upstream    (last) the upstream gtests in the bundle (layers our nets use), GPU instances,
#                     a cuDNN build's CuDNN* suites
# OUT: gpu_check.json (rewritten after each step), log.txt (every command's
# output), gtest_*.xml, torch_*.json: at most 6 files (the device tool brings
# back 8). --cpu runs the same steps on the CPU (no -gpu; batch 1
# or 2 for the timings): the dry run that proves the script.
# Exit status 0 when no step failed. From the device tool, in one call:
#   command: tar xJf gpu-bundle.tar.xz -C /tmp && bash tools/gpu_check.sh /tmp/gpu-bundle $OUT
#   carry: ["gpu-bundle.tar.xz"], timeout_s: 420
set -euo pipefail
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
