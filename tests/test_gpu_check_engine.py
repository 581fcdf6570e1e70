"""cuDNN in the device check (issue 16). tools/gpu_check_inputs.py's engine
rewrite: the check times a cuDNN build without cuDNN by running a copy of
each timing net with `engine: CAFFE` on every layer that has an engine
(Caffe's per-layer choice), so that copy must differ from the original there
and nowhere else. tools/gpu_bundle.py's launcher: a cuDNN bundle runs its
build without cuDNN where libcudnn does not load."""
import importlib.util
import os
import subprocess
import sys

import pytest
from google.protobuf import text_format

from conftest import REPO

NET = """name: "engines"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 engine: CUDNN } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "lrn" type: "LRN" bottom: "conv" top: "lrn" }
layer { name: "pool" type: "Pooling" bottom: "lrn" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Unpooling" bottom: "pool" bottom: "mask" top: "unpool"
  pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "deconv" type: "Deconvolution" bottom: "unpool" top: "rec"
  param { lr_mult: 1 } convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "sig" type: "Sigmoid" bottom: "rec" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "sig" top: "tanh" }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_param { normalization: VALID } }
"""


def load_inputs_module():
    spec = importlib.util.spec_from_file_location("gpu_check_inputs", REPO / "tools" / "gpu_check_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def engine_messages(layer):
    return {f.name: m for f, m in layer.ListFields()
            if f.message_type is not None and "engine" in f.message_type.fields_by_name}


def test_engine_caffe_on_every_engine_layer_and_nothing_else():
    from caffe.proto import caffe_pb2
    gci = load_inputs_module()
    before = text_format.Parse(NET, caffe_pb2.NetParameter())
    after = gci.engine_caffe(text_format.Parse(NET, caffe_pb2.NetParameter()))
    # every layer type whose parameter message has an engine field gets CAFFE
    with_engine = {l.name: sorted(engine_messages(l)) for l in after.layer if engine_messages(l)}
    assert with_engine == {
        "conv": ["convolution_param"], "relu": ["relu_param"], "lrn": ["lrn_param"],
        "pool": ["pooling_param"], "unpool": ["pooling_param"], "deconv": ["convolution_param"],
        "sig": ["sigmoid_param"], "tanh": ["tanh_param"], "prob": ["softmax_param"], "loss": ["softmax_param"]}
    for l in after.layer:
        for name, m in engine_messages(l).items():
            assert m.engine == m.CAFFE, (l.name, name)
    # undoing the engines (and the messages made only to hold one) gives the original back
    assert len(before.layer) == len(after.layer)
    for b, a in zip(before.layer, after.layer):
        for name, m in engine_messages(a).items():
            if b.HasField(name) and getattr(b, name).HasField("engine"):
                m.engine = getattr(b, name).engine  # conv's CUDNN
            else:
                m.ClearField("engine")
            if not b.HasField(name) and not m.ListFields():
                a.ClearField(name)
        assert a == b, (b.name, text_format.MessageToString(a))
    assert before.name == after.name and before.input == after.input


def make_launcher_bundle(tmp_path):
    """A CUDA bundle's layout with tools/gpu_bundle.py's real launcher for a
    cuDNN build; its programs are shell scripts that say which build ran."""
    sys.path.insert(0, str(REPO / "tools"))
    import gpu_bundle
    b = tmp_path / "bundle"
    for d, name in (("bin", "cudnn"), ("nocudnn/bin", "nocudnn")):
        (b / d).mkdir(parents=True)
        prog = b / d / "caffe"
        prog.write_text(f'#!/bin/sh\necho "{name} $LD_LIBRARY_PATH"\n')
        prog.chmod(0o755)
    (b / "lib").mkdir()
    (b / "nocudnn" / "lib").mkdir()
    (b / "run").write_text(gpu_bundle.LAUNCHER.replace("@CUDA@", "1").replace("@CUDNN@", "libcudnn.so.9"))
    (b / "run").chmod(0o755)
    return b


def run_launcher(b, *args, **env):
    return subprocess.run([str(b / "run"), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_launcher_falls_back_without_libcudnn(tmp_path):
    b = make_launcher_bundle(tmp_path)
    # no libcudnn anywhere on the path: the build without cuDNN, its libcaffe first
    proc = run_launcher(b, "--variant")
    assert proc.returncode == 0 and proc.stdout.startswith("no-cudnn: libcudnn.so.9 does not load"), proc
    out = run_launcher(b, "caffe").stdout.split()
    assert out[0] == "nocudnn" and out[1].split(":")[:2] == [str(b / "nocudnn/lib"), str(b / "lib")]


def test_launcher_runs_the_cudnn_build_where_libcudnn_loads(tmp_path):
    root = os.environ.get("RECON_DEC_CUDNN_HEADERS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recon-dec", "cudnn")
    cache = os.path.join(root, "lib")  # tools/test.sh's cache of cuDNN's headers and API library
    if not os.path.exists(os.path.join(cache, "libcudnn.so.9")):
        pytest.skip(f"no {cache}/libcudnn.so.9 (tools/test.sh caches it with the cuDNN headers)")
    b = make_launcher_bundle(tmp_path)
    proc = run_launcher(b, "--variant", RECON_DEC_CUDA_LIBS=cache)
    assert proc.stdout.strip() == "cudnn", proc
    out = run_launcher(b, "caffe", RECON_DEC_CUDA_LIBS=cache).stdout.split()
    assert out[0] == "cudnn" and out[1].split(":")[:2] == [str(b / "lib"), cache]
    # asked not to use it
    proc = run_launcher(b, "caffe", RECON_DEC_CUDA_LIBS=cache, RECON_DEC_CUDNN="0")
    assert proc.stdout.startswith("nocudnn")
