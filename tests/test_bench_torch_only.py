"""bench/bench_vs_pytorch.py --torch-only as the GPU machine runs it (issue
16, tools/gpu_check.py's pytorch step): a python that cannot import pycaffe
(every `import caffe` fails), protoc's caffe_pb2 alone on PYTHONPATH, the
protobuf runtime in pure-Python mode; here on the CPU (.venv-bench's torch)
with a tiny generated net."""
import json
import math
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, REPO

BENCH_PY = REPO / ".venv-bench" / "bin" / "python"
PROTO = BUILD / "caffe-src" / "src" / "caffe" / "proto" / "caffe.proto"

# Runs the script given with every `caffe` import refused (pycaffe would
# load libcaffe; the GPU machine's python 3.12 cannot).
NO_CAFFE = r"""
import runpy, sys
class NoCaffe:
    def find_spec(self, name, path=None, target=None):
        if name == "caffe" or name.startswith("caffe."):
            raise ModuleNotFoundError("import caffe refused by the test", name=name)
sys.meta_path.insert(0, NoCaffe())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 }
                     data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Unpooling" bottom: "pool" bottom: "mask" top: "unpool"
  pooling_param { kernel_size: 2 stride: 2 } unpooling_param { switches: KNOWN } }
layer { name: "deconv" type: "Deconvolution" bottom: "unpool" top: "rec"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "rec_loss" type: "EuclideanLoss" bottom: "rec" bottom: "data" top: "rec_loss" loss_weight: 0.1 }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def bench_python():
    if not BENCH_PY.exists():
        pytest.skip(f"{BENCH_PY} missing (PyTorch is benchmark-only: sh bench/setup_bench_venv.sh)")
    if subprocess.run([str(BENCH_PY), "-c", "import torch"], capture_output=True).returncode:
        pytest.skip(f"{BENCH_PY} cannot import torch (sh bench/setup_bench_venv.sh)")
    return BENCH_PY


def test_torch_only_without_pycaffe(tmp_path):
    py = bench_python()
    if shutil.which("protoc") is None or not PROTO.exists():
        pytest.skip(f"needs protoc and {PROTO} (tools/setup.sh)")
    pb2 = tmp_path / "python" / "caffe" / "proto"
    pb2.mkdir(parents=True)
    subprocess.run(["protoc", f"--proto_path={PROTO.parent}", f"--python_out={pb2}", str(PROTO)], check=True)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "no_caffe.py").write_text(NO_CAFFE)
    out = tmp_path / "torch.json"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "python"), PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([str(py), str(tmp_path / "no_caffe.py"), str(REPO / "bench" / "bench_vs_pytorch.py"),
                           "--torch-only", "--device", "cpu", "--threads", "1", "--classes", "5", "--iters", "3", "--warmup", "1",
                           "--json", str(out), str(tmp_path / "net.prototxt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row, = json.loads(out.read_text())
    assert row["device"] == "cpu" and row["mode"] == "torch-only" and row["batch"] == 2
    assert row["input_shapes"] == {"data": [2, 3, 8, 8], "label": [2]}
    assert row["caffe_pb2"] == str(pb2 / "caffe_pb2.py")
    assert row["finite"] is True
    for k in ("fwd_bwd_ms", "step_ms", "gflop"):
        assert math.isfinite(row[k]) and row[k] > 0, (k, row[k])
    assert len(row["fwd_bwd_all_ms"]) == len(row["step_all_ms"]) == 3
    # conv 2*3*8*8*4*27 + deconv (same) + fc 2*64*5 multiply-adds forward, x2 FLOP; backward more
    assert row["gflop"] > 2 * (2 * 2 * 64 * 4 * 27 + 2 * 64 * 5) / 1e9


def test_torch_only_refuses_other_modes(tmp_path):
    py = bench_python()
    proc = subprocess.run([str(py), str(REPO / "bench" / "bench_vs_pytorch.py"), "--device", "cuda",
                           str(tmp_path / "x.prototxt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--device is for --torch-only" in proc.stderr
