#!/usr/bin/env python
"""Prepares every input of tools/gpu_check.sh here, where recon-dec, pycaffe
and a CPU Caffe exist (the GPU machine has none of them): run with .venv's
python, then pack the folder into the bundle (tools/gpu_bundle.sh --inputs).

    .venv/bin/python tools/gpu_check_inputs.py OUT [--caffe build/caffe-build/tools/caffe]

OUT/ (every path inside is relative to OUT: the check runs caffe from OUT):
  data/{train,val}_lmdb   raw (unencoded) Datums of the demo's digits, 40x40
                          (512 train, 200 val): the lean bundle has no OpenCV,
                          so its Data layer cannot decode the demo's PNG LMDBs
  svgg/<variant>/         `recon-dec generate` of the demo's small VGG
                          (variants baseline, swwae-all), data layers on those LMDBs
  svgg/<variant>/init.caffemodel
                          weights of every layer of that variant's train_val
                          (2 CPU iterations from the fillers): GPU and CPU
                          `caffe test` load the same weights
  train/<variant>_solver.prototxt
                          the demo's step-4 net trained from scratch, short
  time/<net>_b<N>.prototxt
                          VGG16 baseline and SWWAE-all (step-4 train_val,
                          224 px) with DummyData of batch N (32 GPU, 1 CPU)
  time/<net>_b<N>_engine-caffe.prototxt
                          the same with `engine: CAFFE` on every layer that has an
                          engine (Caffe's own im2col + cuBLAS code): the check times
                          a cuDNN build with and without cuDNN
  time/unpool_b<N>.prototxt
                          Max pooling + Unpooling (known and fixed switches)
                          + an identity Power (a device copy) for bandwidth
  inputs.json             what was made, shapes for the bandwidth numbers
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

VARIANTS = ["baseline", "swwae-all"]
TRAIN_ITERS = 200       # `caffe train` of the check (GPU); gpu_check --cpu runs 30
TRAIN_LR = 5e-3         # from scratch, both variants, as the demo pretrains (on CPU the
                        # mean loss of the last quarter of 30 iterations is below the first's)
UNPOOL_SHAPE = {32: (32, 64, 224, 224), 2: (2, 16, 112, 112)}  # pooled input of the bandwidth net


def log(msg):
    print(f"[gpu_check_inputs] {msg}", flush=True)


def relative(text, root):
    """Absolute paths under `root` inside a prototxt made relative to it."""
    return text.replace(str(root) + "/", "")


def make_data(out):
    import numpy as np
    from recon_dec.data import mnist
    from recon_dec.data import store
    images, labels = mnist.load_mnist_5k()
    images = mnist.pad(images)
    train_idx, val_idx = mnist.split(labels)
    train_idx, val_idx = train_idx[:512], val_idx[::5]  # 200 val: 20 per digit
    for name, idx in (("train", train_idx), ("val", val_idx)):
        store.write_raw_lmdb(images[idx], labels[idx], out / "data" / f"{name}_lmdb",
                             fingerprint=f"gpu-check {name} {len(idx)}")
    return float(images[train_idx].mean())


def make_svgg(out, mean, variants):
    from recon_dec.experiments import demo
    from recon_dec.graph.data_layers import DataSpec
    from recon_dec.runners import generate
    spec = DataSpec(kind="lmdb", train_source=str(out / "data" / "train_lmdb"),
                    val_source=str(out / "data" / "val_lmdb"), mean=(round(mean, 3),),
                    mirror=False, crop=demo.CROP, test_batch=50)
    stage = {"batch": {"all": 32}, "iter_size": {"all": 1}, "max_iter": {"all": TRAIN_ITERS},
             "base_lr": {"4": TRAIN_LR}, "lr_policy": {"all": "fixed"},
             "snapshot": {"all": 100000}, "random_seed": {"all": 1}}
    opts = generate.Options(data=spec, test_iter=4, test_interval=100000, solver_mode="GPU",
                            stage=stage)
    generate.generate(demo.DEMO_NET, variants, out / "svgg", opts,
                      method_options=demo.method_options(), force=True)
    for path in (out / "svgg").rglob("*.prototxt"):
        path.write_text(relative(path.read_text(), out))


def caffe_run(caffe, args, cwd):
    env = dict(os.environ, GLOG_minloglevel="0", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([caffe, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"gpu_check_inputs: {caffe} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


def make_weights_and_solvers(out, caffe, variants):
    (out / "train").mkdir(exist_ok=True)
    for v in variants:
        net = f"svgg/{v}/train_val.prototxt"
        solver = (out / "svgg" / v / "step4" / "solver.prototxt")
        base = solver.read_text() if solver.exists() else None
        if base is None:
            sys.exit(f"gpu_check_inputs: {solver} missing (generate's layout changed?)")
        text = re.sub(r'(?m)^net: .*$', f'net: "{net}"', base)
        text = re.sub(r'(?m)^(display|average_loss|snapshot|test_interval|test_iter|max_iter|base_lr|snapshot_prefix|'
                      r'solver_mode|iter_size|test_initialization):.*\n', "", text)
        train = text + ("display: 1\naverage_loss: 1\nmax_iter: %d\nbase_lr: %g\nsnapshot: 0\ntest_interval: 100000\n"
                        "test_iter: 1\ntest_initialization: false\nsnapshot_after_train: false\n"
                        "iter_size: 1\n" % (TRAIN_ITERS, TRAIN_LR))
        (out / "train" / f"{v}_solver.prototxt").write_text(train)
        # init.caffemodel: 2 iterations from the fillers, snapshot at the end
        init = text + (f'max_iter: 2\nbase_lr: {TRAIN_LR}\nsnapshot: 0\ntest_interval: 100000\n'
                       f'test_iter: 1\ntest_initialization: false\niter_size: 1\n'
                       f'snapshot_prefix: "svgg/{v}/init"\n')
        tmp = out / "svgg" / v / "init_solver.prototxt"
        tmp.write_text(init)
        caffe_run(caffe, ["train", f"-solver={tmp.relative_to(out)}"], out)
        (out / "svgg" / v / "init_iter_2.caffemodel").rename(out / "svgg" / v / "init.caffemodel")
        for f in (out / "svgg" / v).glob("init_iter_*.solverstate"):
            f.unlink()
        tmp.unlink()


def dummy_net(train_val, batch, size=224, classes=1000):
    """The TRAIN net of `train_val` with its data layer(s) replaced by one
    DummyData of data (batch x 3 x size x size, gaussian) and label."""
    from recon_dec.caffe_io import protos
    pb2 = protos.pb2()
    from google.protobuf import text_format
    net = pb2.NetParameter()
    text_format.Merge(pathlib.Path(train_val).read_text(), net)
    keep = []
    for layer in net.layer:
        if layer.type in ("Data", "ScaleJitterData", "ImageData"):
            if any(r.phase == pb2.TEST for r in layer.include):
                continue
            d = pb2.LayerParameter(name=layer.name, type="DummyData", top=list(layer.top))
            d.dummy_data_param.shape.add(dim=[batch, 3, size, size])
            d.dummy_data_param.shape.add(dim=[batch])
            g = d.dummy_data_param.data_filler.add(type="gaussian", std=50)
            d.dummy_data_param.data_filler.add(type="constant", value=1)
            del g
            keep.append(d)
        elif any(r.phase == pb2.TEST for r in layer.include):
            continue
        else:
            keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    return text_format.MessageToString(net)


# Layer types whose parameter message has Caffe's `engine` field, when the
# layer has none written: the message the layer reads its engine from.
ENGINE_PARAM = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                "Pooling": "pooling_param", "ReLU": "relu_param", "Sigmoid": "sigmoid_param",
                "TanH": "tanh_param", "Softmax": "softmax_param", "SoftmaxWithLoss": "softmax_param",
                "LRN": "lrn_param", "SPP": "spp_param"}


def engine_caffe(net):
    """NetParameter `net` with engine CAFFE on every layer that can take
    another engine (cuDNN): the type's parameter message (ENGINE_PARAM, made
    if absent) and any other message the layer already has with an engine
    field. Nothing else changes. Returns net (modified in place)."""
    for layer in net.layer:
        msgs = [m for f, m in layer.ListFields()
                if f.message_type is not None and "engine" in f.message_type.fields_by_name]
        name = ENGINE_PARAM.get(layer.type)
        if name is not None and "engine" in getattr(layer, name).DESCRIPTOR.fields_by_name:
            msgs.append(getattr(layer, name))
        for m in msgs:
            m.engine = m.CAFFE
    return net


def make_time_nets(out):
    from recon_dec.runners import generate
    from recon_dec.graph.data_layers import DataSpec
    tmp = out / ".vgg16"
    spec = DataSpec(kind="lmdb", train_source="/nonexistent/train", val_source="/nonexistent/val")
    generate.generate(REPO / "models" / "vgg16" / "deploy.prototxt", VARIANTS, tmp,
                      generate.Options(data=spec), force=True)
    (out / "time").mkdir(exist_ok=True)
    for v in VARIANTS:
        for batch in (32, 1):
            text = dummy_net(tmp / v / "train_val.prototxt", batch)
            (out / "time" / f"vgg16-{v}_b{batch}.prototxt").write_text(text)
            from google.protobuf import text_format
            from recon_dec.caffe_io import protos
            net = engine_caffe(text_format.Parse(text, protos.pb2().NetParameter()))
            (out / "time" / f"vgg16-{v}_b{batch}_engine-caffe.prototxt").write_text(
                text_format.MessageToString(net))
    shutil.rmtree(tmp)
    shapes = {}
    for batch, (n, c, h, w) in UNPOOL_SHAPE.items():
        (out / "time" / f"unpool_b{batch}.prototxt").write_text(UNPOOL_NET % dict(n=n, c=c, h=h, w=w))
        shapes[f"unpool_b{batch}"] = [n, c, h, w]
    return shapes


UNPOOL_NET = """name: "unpool_bandwidth"
force_backward: true
layer { name: "x" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: %(n)d dim: %(c)d dim: %(h)d dim: %(w)d } data_filler { type: "gaussian" std: 1 } } }
layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool_known" type: "Unpooling" bottom: "p" bottom: "mask" top: "u_known"
  pooling_param { kernel_size: 2 stride: 2 } unpooling_param { switches: KNOWN } }
layer { name: "unpool_fixed" type: "Unpooling" bottom: "p" top: "u_fixed"
  pooling_param { kernel_size: 2 stride: 2 } unpooling_param { switches: FIXED } }
layer { name: "copy" type: "Power" bottom: "x" top: "x_copy" power_param { power: 1 scale: 1 shift: 0 } }
layer { name: "sink" type: "Silence" bottom: "u_known" bottom: "u_fixed" bottom: "x_copy" }
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--caffe", default=str(REPO / "build" / "caffe-build" / "tools" / "caffe"))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"small-VGG variants (default {','.join(VARIANTS)})")
    ap.add_argument("--no-time-nets", action="store_true",
                    help="no VGG16/unpooling timing nets (the relocation test's quick inputs)")
    a = ap.parse_args()
    out = pathlib.Path(a.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log("raw LMDBs")
    mean = make_data(out)
    log(f"generate small VGG ({a.variants})")
    variants = a.variants.split(",")
    make_svgg(out, mean, variants)
    log("init caffemodels, train solvers")
    make_weights_and_solvers(out, a.caffe, variants)
    shapes = {}
    if not a.no_time_nets:
        log("VGG16 timing nets, unpooling bandwidth nets")
        shapes = make_time_nets(out)
    suites = set()
    for f in sorted((REPO / "caffe_ext" / "src" / "caffe" / "test").glob("test_*.c*")):
        suites.update(re.findall(r"\b(?:TYPED_TEST_CASE|TEST_F|TYPED_TEST|TEST)\s*\(\s*(\w+)\s*,", f.read_text()))
    info = {"variants": variants, "ext_suites": sorted(suites), "train_iters": TRAIN_ITERS, "train_lr": TRAIN_LR,
            "unpool_input_shapes": shapes, "mean": mean}
    (out / "inputs.json").write_text(json.dumps(info, indent=1))
    log(f"done: {out}")


if __name__ == "__main__":
    main()
