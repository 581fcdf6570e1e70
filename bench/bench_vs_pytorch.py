#!/usr/bin/env python
"""Caffe against PyTorch (CPU) on the nets we generate: from a train_val
prototxt (read with caffe_pb2 through recon_dec.caffe_io.protos) build the
identical graph in PyTorch, copy the same weights into both, check that both
give the same forward losses and parameter gradients (so the work compared is
the same), then time one training iteration of each in the same run, with
the same thread count and batch: forward + backward, and forward + backward +
the solver's update. Prints a table with Caffe ms, PyTorch ms and the ratio
PyTorch / Caffe (above 1: Caffe is faster), and GFLOP/s of the convolutions
and inner products.

PyTorch is a benchmark-only dependency (bench/requirements.txt), never needed
by the product or the test command. It lives in its own venv, .venv-bench,
which also sees .venv's packages (pycaffe, numpy, recon_dec) through a .pth
file, so .venv stays as the product's requirements make it:

    sh bench/setup_bench_venv.sh           # once, after tools/setup.sh
    .venv-bench/bin/python bench/bench_vs_pytorch.py --standard [--rows svgg,vgg64,ladder]
    .venv-bench/bin/python bench/bench_vs_pytorch.py OUT/VARIANT/train_val.prototxt [--input C,H,W]

--torch-only [--device cuda] times PyTorch alone (no Caffe, no pycaffe, numpy
optional; weights from the prototxt's fillers): what tools/gpu_check.py runs
on the GPU machine, with a bundle's python/ (caffe_pb2, protobuf) on PYTHONPATH.

What is compared:
- data layers (Data, ImageData, ScaleJitterData, ...) are replaced by fixed
  random input blobs of the same shapes (Input layers on the Caffe side; the
  values are pixels in [0, 255) through the layer's mean and scale; labels
  in [0, --classes)); Accuracy layers are dropped from both;
- the check runs both nets with their noise off (Dropout removed, GaussianNoise
  std 0, MaskingNoise ratio 0, PatchRemoval at the centre); the timed nets are
  the generated ones, noise on (each framework draws its own noise);
- layers are mapped one to one (Convolution -> conv2d, Deconvolution ->
  conv_transpose2d, Pooling -> max_pool2d (with indices when the switches are
  a top) / avg_pool2d, Unpooling -> max_unpool2d, our ladder layers as the
  formulas of their C++ ...); weights shared by name in Caffe are one tensor
  in PyTorch; a layer type with no mapping stops the run with its name;
- the update is the solver's type (SGD with momentum, Adam, ...) with Caffe's
  lr_mult/decay_mult as PyTorch parameter groups; iter_size is 1 in both; the
  learning rate is 0 in both (all of the update's arithmetic is still done:
  random inputs would otherwise drive VGG16 to NaN in a few steps);
- Caffe and PyTorch each run in their own process (one library's idle
  threads never compete with the other's), alternately, --rounds times;
  the table shows the median iteration;
- GFLOP per iteration counts the multiply-adds of Convolution,
  Deconvolution and InnerProduct (2 FLOP each) in the forward pass and the
  backward passes actually run (weight gradient; data gradient where the
  input needs one); elementwise layers are not counted.
"""
import argparse
import contextlib
import io
import importlib.util
import json
import math
import os
import pathlib
import statistics
import struct
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
except ImportError:  # --torch-only runs without numpy (a GPU machine's bare python with torch)
    np = None

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

DATA_TYPES = {"Data", "ImageData", "ScaleJitterData", "HDF5Data", "WindowData", "MemoryData", "DummyData"}
DROPPED_TYPES = {"Accuracy"}
# -log(FLT_MIN) = 87.34, rounded to float32 as Caffe computes it
CAFFE_MAX_NLL = struct.unpack("f", struct.pack("f", 126 * math.log(2)))[0]


class Unsupported(Exception):
    pass


_STANDALONE_PB2 = None  # --torch-only: protoc's caffe_pb2 loaded by file, never the caffe package


def pb2():
    if _STANDALONE_PB2 is not None:
        return _STANDALONE_PB2
    from recon_dec.caffe_io import protos
    return protos.pb2()


def load_standalone_pb2():
    """caffe/proto/caffe_pb2.py from the first sys.path entry that has one
    (a bundle's python/, or pycaffe's), loaded as a plain module: importing
    the `caffe` package would load pycaffe's libcaffe, which a GPU machine's
    python 3.12 cannot."""
    global _STANDALONE_PB2
    for d in sys.path:
        f = pathlib.Path(d or ".") / "caffe" / "proto" / "caffe_pb2.py"
        if f.is_file():
            spec = importlib.util.spec_from_file_location("caffe_pb2", f)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _STANDALONE_PB2 = mod
            return f
    raise SystemExit("bench_vs_pytorch.py: --torch-only needs protoc's caffe/proto/caffe_pb2.py on PYTHONPATH "
                     "(a GPU bundle's python/)")


def read_prototxt(path, what="net"):
    if _STANDALONE_PB2 is None:
        from recon_dec.caffe_io import protos
        return (protos.read_net if what == "net" else protos.read_solver)(str(path))
    from google.protobuf import text_format
    msg = pb2().NetParameter() if what == "net" else pb2().SolverParameter()
    try:
        text_format.Merge(pathlib.Path(path).read_text(), msg)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        raise SystemExit(f"{path}: not a readable {what} prototxt ({' '.join(str(e).split())})") from None
    return msg


# ---------------------------------------------------------------- net preparation

def _rule_met(rule, state):
    if rule.HasField("phase") and rule.phase != state["phase"]:
        return False
    if rule.HasField("min_level") and state["level"] < rule.min_level:
        return False
    if rule.HasField("max_level") and state["level"] > rule.max_level:
        return False
    if any(s not in state["stages"] for s in rule.stage):
        return False
    if any(s in state["stages"] for s in rule.not_stage):
        return False
    return True


def train_layers(net):
    """The layers Caffe builds for the TRAIN phase (Net::FilterNet's rules)."""
    p = pb2()
    state = {"phase": p.TRAIN, "level": net.state.level, "stages": set(net.state.stage)}
    kept = []
    for l in net.layer:
        if l.include:
            ok = any(_rule_met(r, state) for r in l.include)
        else:
            ok = not any(_rule_met(r, state) for r in l.exclude)
        if ok:
            kept.append(l)
    return kept


def find_plan(net_path):
    d = pathlib.Path(net_path).resolve().parent
    for cand in (d, d.parent, d.parent.parent):
        if (cand / "plan.json").exists():
            return cand / "plan.json"
    return None


def data_tops(layer, chw, classes):
    """[(top, shape, kind, mean, scale)] of a data layer, kind 'data' or 'label'."""
    t = layer.transform_param
    if layer.type == "DummyData":  # tools/gpu_check_inputs.py's time nets: data, label
        shapes = layer.dummy_data_param.shape
        if not shapes:
            raise Unsupported(f"data layer '{layer.name}': DummyData without shape")
        out = []
        for i, top in enumerate(layer.top):
            shape = list(shapes[min(i, len(shapes) - 1)].dim)
            out.append((top, shape, "data" if i == 0 else "label", [], 1.0))
        return out
    if layer.type == "ScaleJitterData":
        sp = layer.scale_jitter_data_param
        batch, crop = sp.batch_size, sp.crop_size
        c = 3 if sp.color else 1
        mean, scale = list(sp.mean_value), sp.scale
        h = w = crop
    else:
        batch = {"Data": lambda: layer.data_param.batch_size,
                 "ImageData": lambda: layer.image_data_param.batch_size,
                 "HDF5Data": lambda: layer.hdf5_data_param.batch_size,
                 "WindowData": lambda: layer.window_data_param.batch_size,
                 "MemoryData": lambda: layer.memory_data_param.batch_size}.get(layer.type)
        if batch is None:
            raise Unsupported(f"data layer '{layer.name}' of type {layer.type}")
        batch = batch()
        if chw is None:
            raise Unsupported(f"data layer '{layer.name}': input shape unknown (give --input C,H,W)")
        c, h, w = chw
        if t.crop_size:
            h = w = t.crop_size
        mean, scale = list(t.mean_value), t.scale
    out = [(layer.top[0], [batch, c, h, w], "data", mean, scale)]
    if len(layer.top) > 1:
        out.append((layer.top[1], [batch], "label", None, None))
    return out


def prepare(net_path, chw=None, classes=10):
    """(check net, timed net, inputs) from a train_val prototxt: TRAIN-phase
    layers, data layers replaced by Input layers, Accuracy dropped; the check
    net has its noise off."""
    src = read_prototxt(net_path)
    if chw is None:
        plan = find_plan(net_path)
        if plan is not None:
            chw = tuple(json.loads(plan.read_text())["input"])
    layers = train_layers(src)
    inputs = []
    timed = pb2().NetParameter()
    timed.name = src.name
    timed.force_backward = src.force_backward
    for l in layers:
        if l.type in DATA_TYPES or l.type == "Input":
            if l.type == "Input":
                tops = [(t, list(l.input_param.shape[min(i, len(l.input_param.shape) - 1)].dim), "data", [], 1.0)
                        for i, t in enumerate(l.top)]
            else:
                tops = data_tops(l, chw, classes)
            inputs.extend(tops)
            new = timed.layer.add()
            new.name, new.type = l.name, "Input"
            for top, shape, *_ in tops:
                new.top.append(top)
                new.input_param.shape.add().dim.extend(shape)
            continue
        if l.type in DROPPED_TYPES:
            continue
        new = timed.layer.add()
        new.CopyFrom(l)
        del new.include[:]
        del new.exclude[:]
    check = pb2().NetParameter()
    check.CopyFrom(timed)
    del check.layer[:]
    for l in timed.layer:
        if l.type == "Dropout" and list(l.top) == list(l.bottom):
            continue
        new = check.layer.add()
        new.CopyFrom(l)
        if l.type == "Dropout":
            new.dropout_param.dropout_ratio = 0
        elif l.type == "GaussianNoise":
            new.gaussian_noise_param.std = 0
        elif l.type == "MaskingNoise":
            new.masking_noise_param.ratio = 0
        elif l.type == "PatchRemoval":
            new.patch_removal_param.mode = new.patch_removal_param.CENTER
    return check, timed, inputs


def make_inputs(inputs, classes, seed):
    rng = np.random.RandomState(seed)
    arrays = {}
    for top, shape, kind, mean, scale in inputs:
        if kind == "label":
            arrays[top] = rng.randint(0, classes, size=shape).astype(np.float32)
        else:
            x = rng.uniform(0, 255, size=shape).astype(np.float32)
            if mean:
                m = np.array(mean if len(mean) == shape[1] else mean[:1] * shape[1], np.float32)
                x -= m.reshape(1, -1, *([1] * (len(shape) - 2)))
            arrays[top] = (x * np.float32(scale if scale else 1.0)).astype(np.float32)
    return arrays


def param_key(layer, j):
    if j < len(layer.param) and layer.param[j].name:
        return "shared:" + layer.param[j].name
    return f"{layer.name}#{j}"


def solver_settings(solver_path):
    s = {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8,
         "weight_decay": 5e-4, "rms_decay": 0.99}
    if solver_path:
        sp = read_prototxt(solver_path, "solver")
        legacy = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}
        s["type"] = sp.type if sp.HasField("type") else legacy.get(sp.solver_type, "SGD")
        for k in ("base_lr", "momentum", "momentum2", "delta", "weight_decay", "rms_decay"):
            if sp.HasField(k):
                s[k] = getattr(sp, k)
    return s


def timing_settings(s):
    """The solver as timed: its type and hyperparameters, the learning rate
    0 in both frameworks. The update's arithmetic is done in full either way
    (momentum / moment estimates, weight decay, the step), but the weights
    stay put: fixed random inputs and random weights otherwise drive some
    nets (VGG16) to NaN within a few steps, and Caffe's MAX pooling then
    writes its gradient to index -1 (heap corruption at exit)."""
    return dict(s, base_lr=0.0)


def write_caffe_solver(path, net_file, s):
    sp = pb2().SolverParameter()
    sp.net = str(net_file)
    sp.type = s["type"]
    sp.base_lr = 0  # see timing_settings
    sp.lr_policy = "fixed"
    sp.momentum = s["momentum"]
    if s["type"] == "Adam":
        sp.momentum2 = s["momentum2"]
    sp.delta = s["delta"]
    sp.weight_decay = s["weight_decay"]
    sp.max_iter = 1000000
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.solver_mode = sp.CPU
    sp.random_seed = 1
    sp.iter_size = 1
    from recon_dec.caffe_io import protos
    pathlib.Path(path).write_text(protos.to_text(sp))


# ---------------------------------------------------------------- Caffe side

def caffe_set_weights(net, layer_protos, weights):
    for name, layer in zip(net._layer_names, net.layers):
        lp = layer_protos.get(name)
        for j, blob in enumerate(layer.blobs):
            blob.data[...] = weights[param_key(lp, j)]


def caffe_zero_diffs(net):
    for layer in net.layers:
        for blob in layer.blobs:
            blob.diff[...] = 0


def caffe_losses(net, layer_protos):
    out = {}
    for l in layer_protos.values():
        for t, w in loss_weights(l):
            out[t] = (float(net.blobs[t].data.ravel()[0]), w)
    return out


def loss_weights(l):
    """[(top, weight)] of the tops of layer proto l with a non-zero loss weight (Caffe's rule)."""
    ws = list(l.loss_weight)
    if not ws and l.type.endswith("Loss"):
        ws = [1.0]
    return [(t, w) for t, w in zip(l.top, ws) if w != 0]


def training_steps(tnet, opt):
    """(forward + backward, forward + backward + update) of a TorchNet, the
    two iterations the benchmark times."""
    def fwd_bwd():
        opt.zero_grad()
        tnet.forward().backward()

    def step():
        fwd_bwd()
        opt.step()
    return fwd_bwd, step


def timed_loop(fn, warmup, iters, sync=None):
    """Seconds of each of `iters` calls of fn after `warmup` calls; sync
    (torch.cuda.synchronize) around each timed call: CUDA runs asynchronously."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return ts


def worker_caffe(spec):
    import caffe
    from recon_dec.caffe_io import protos
    caffe.set_mode_cpu()
    inputs = dict(np.load(spec["inputs"]))
    weights = dict(np.load(spec["weights"]))
    result = {}
    if spec["check"]:
        protos_check = {l.name: l for l in protos.read_net(spec["check_net"]).layer}
        net = caffe.Net(spec["check_net"], caffe.TRAIN)
        caffe_set_weights(net, protos_check, weights)
        for k, v in inputs.items():
            net.blobs[k].data[...] = v
        caffe_zero_diffs(net)
        net.forward()
        result["losses"] = caffe_losses(net, protos_check)
        result["shapes"] = {k: list(b.data.shape) for k, b in net.blobs.items()}
        net.backward()
        grads = {}
        for name, layer in zip(net._layer_names, net.layers):
            lp = protos_check.get(name)
            for j, blob in enumerate(layer.blobs):
                grads.setdefault(param_key(lp, j), blob.diff.copy())
        np.savez(spec["out_prefix"] + "-caffe-grads.npz", **{f"g{i}": grads[k] for i, k in enumerate(spec["keys"])})
        del net
    protos_timed = {l.name: l for l in protos.read_net(spec["timed_net"]).layer}
    solver = caffe.get_solver(spec["caffe_solver"])
    net = solver.net
    caffe_set_weights(net, protos_timed, weights)
    for k, v in inputs.items():
        net.blobs[k].data[...] = v

    def fwd_bwd():
        net.forward()
        net.backward()
    result["fwd_bwd"] = timed_loop(fwd_bwd, spec["warmup"], spec["iters"])
    if spec["solver"]:
        result["step"] = timed_loop(lambda: solver.step(1), 1, spec["iters"])
    net.forward()
    result["finite"] = all(np.isfinite(v) for v, _ in caffe_losses(net, protos_timed).values())
    return result


# ---------------------------------------------------------------- PyTorch side

def _hw_conv(p, name, default):
    """(h, w) of a ConvolutionParameter's repeated `name` (kernel_size, stride,
    pad, dilation) or its _h/_w fields."""
    base = name.replace("_size", "")
    fields = p.DESCRIPTOR.fields_by_name
    if base + "_h" in fields and (p.HasField(base + "_h") or p.HasField(base + "_w")):
        return getattr(p, base + "_h"), getattr(p, base + "_w")
    rep = list(getattr(p, name))
    if not rep:
        return default, default
    if len(rep) > 2:
        raise Unsupported(f"{len(rep)}-D {name}")
    return rep[0], rep[-1]


def _hw_pool(p, name, default):
    base = name.replace("_size", "")
    if p.HasField(base + "_h") or p.HasField(base + "_w"):
        return getattr(p, base + "_h"), getattr(p, base + "_w")
    if p.HasField(name):
        v = getattr(p, name)
        return v, v
    return default, default


class TorchNet:
    """A Caffe NetParameter (Input layers for the data) as a list of PyTorch
    operations on a dict of named blobs."""

    def __init__(self, net, weights, meta, inputs, device="cpu"):
        import torch
        self.torch = torch
        self.device = torch.device(device)

        def tensor(v, copy):  # numpy arrays (the comparison) or tensors (--torch-only)
            if torch.is_tensor(v):
                return v.detach().clone().to(self.device)
            return torch.from_numpy(v.copy() if copy else v).to(self.device)
        self.inputs = {k: tensor(v, False) for k, v in inputs.items()}
        self.params = {}
        self.meta = meta
        for key, m in meta.items():
            t = tensor(weights[key], True)
            if m["learnable"] and m["lr_mult"] != 0:
                t = torch.nn.Parameter(t)
            self.params[key] = t
        self.ops = []
        self.losses = []
        self.flops = {}
        self.counting = True
        for l in net.layer:
            build = getattr(self, "_" + l.type, None)
            if build is None:
                raise Unsupported(f"layer '{l.name}': no PyTorch mapping for type {l.type}")
            op = build(l)
            if op is not None:
                self.ops.append(self._with_propagate(l, op))
            self.losses.extend(loss_weights(l))

    def _with_propagate(self, l, op):
        stop = [b for b, pd in zip(l.bottom, l.propagate_down) if not pd]
        if not stop:
            return op

        def wrapped(env):
            saved = {b: env[b] for b in stop}
            for b in stop:
                env[b] = env[b].detach()
            op(env)
            for b in stop:  # the bottom keeps its graph for other consumers
                if b not in l.top:
                    env[b] = saved[b]
        return wrapped

    def forward(self):
        env = dict(self.inputs)
        for op in self.ops:
            op(env)
        total = 0
        for t, w in self.losses:
            total = total + w * env[t]
        self.env = env
        self.counting = False
        return total

    def learnable(self):
        return {k: p for k, p in self.params.items() if isinstance(p, self.torch.nn.Parameter)}

    def _p(self, l, j):
        return self.params[param_key(l, j)]

    def _count(self, name, macs, weight, x):
        if self.counting:
            bwd = (macs if weight is not None and weight.requires_grad else 0) + (macs if x.requires_grad else 0)
            self.flops[name] = (2 * macs, 2 * bwd)

    # --- layers
    def _Input(self, l):
        return None

    def _Silence(self, l):
        return None

    def _Convolution(self, l, transposed=False):
        F = self.torch.nn.functional
        p = l.convolution_param
        if p.axis != 1:
            raise Unsupported(f"layer '{l.name}': convolution axis {p.axis}")
        k = _hw_conv(p, "kernel_size", None)
        s = _hw_conv(p, "stride", 1)
        pad = _hw_conv(p, "pad", 0)
        dil = _hw_conv(p, "dilation", 1)
        g = p.group
        W = self._p(l, 0)
        b = self._p(l, 1) if p.bias_term else None
        bottom, top, name = l.bottom[0], l.top[0], l.name
        if len(l.bottom) != 1:
            raise Unsupported(f"layer '{l.name}': several bottoms")

        def op(env):
            x = env[bottom]
            if transposed:
                y = F.conv_transpose2d(x, W, b, s, pad, 0, g, dil)
                macs = x.numel() * W.shape[1] * k[0] * k[1]
            else:
                y = F.conv2d(x, W, b, s, pad, dil, g)
                macs = y.numel() * (x.shape[1] // g) * k[0] * k[1]
            self._count(name, macs, W, x)
            env[top] = y
        return op

    def _Deconvolution(self, l):
        return self._Convolution(l, transposed=True)

    def _InnerProduct(self, l):
        F = self.torch.nn.functional
        p = l.inner_product_param
        W = self._p(l, 0)
        b = self._p(l, 1) if p.bias_term else None
        axis, transpose = p.axis, p.transpose
        bottom, top, name = l.bottom[0], l.top[0], l.name

        def op(env):
            x = env[bottom]
            x2 = x.reshape(*x.shape[:axis], -1)
            y = F.linear(x2, W.t() if transpose else W, b)
            self._count(name, x2.numel() * y.shape[-1], W, x)
            env[top] = y
        return op

    def _Pooling(self, l):
        F = self.torch.nn.functional
        p = l.pooling_param
        P = pb2().PoolingParameter
        k = _hw_pool(p, "kernel_size", None)
        s = _hw_pool(p, "stride", 1)
        pad = _hw_pool(p, "pad", 0)
        ceil = p.round_mode == P.CEIL
        glob = p.global_pooling
        bottom, tops = l.bottom[0], list(l.top)
        if p.pool == P.MAX:
            def op(env):
                x = env[bottom]
                kk = tuple(x.shape[2:]) if glob else k
                if len(tops) > 1:
                    env[tops[0]], env[tops[1]] = F.max_pool2d(x, kk, s, pad, 1, ceil, return_indices=True)
                else:
                    env[tops[0]] = F.max_pool2d(x, kk, s, pad, 1, ceil)
        elif p.pool == P.AVE:
            if len(tops) > 1:
                raise Unsupported(f"layer '{l.name}': AVE pooling with a mask top")

            def op(env):
                x = env[bottom]
                kk = tuple(x.shape[2:]) if glob else k
                env[tops[0]] = F.avg_pool2d(x, kk, s, pad, ceil, True)
        else:
            raise Unsupported(f"layer '{l.name}': pooling method {p.pool}")
        return op

    def _Unpooling(self, l):
        torch = self.torch
        F = torch.nn.functional
        p, u = l.pooling_param, l.unpooling_param
        U = pb2().UnpoolingParameter
        k = _hw_pool(p, "kernel_size", None)
        s = _hw_pool(p, "stride", 1)
        pad = _hw_pool(p, "pad", 0)
        if u.switches == U.AUTO:
            known = len(l.bottom) >= 2
        else:
            known = u.switches == U.KNOWN
        has_ref = len(l.bottom) == (2 if known else 1) + 1
        overlap = k[0] > s[0] or k[1] > s[1]
        average = u.overlap == U.AVERAGE
        off = (u.offset_h if u.HasField("offset_h") else k[0] // 2, u.offset_w if u.HasField("offset_w") else k[1] // 2)
        if len(l.top) > 1:
            raise Unsupported(f"layer '{l.name}': Unpooling's count top")
        bottoms, top = list(l.bottom), l.top[0]
        cache = {}

        def out_size(env, x):
            if has_ref:
                return tuple(env[bottoms[-1]].shape[2:])
            if u.HasField("out_h"):
                return u.out_h, u.out_w
            return ((x.shape[2] - 1) * s[0] + k[0] - 2 * pad[0], (x.shape[3] - 1) * s[1] + k[1] - 2 * pad[1])

        def fixed_index(shape, H, W):
            key = (tuple(shape), H, W)
            if key not in cache:
                n, c, ph, pw = shape
                h = torch.arange(ph, device=self.device) * s[0] - pad[0] + off[0]
                w = torch.arange(pw, device=self.device) * s[1] - pad[1] + off[1]
                valid = ((h >= 0) & (h < H))[:, None] & ((w >= 0) & (w < W))[None, :]
                idx = (h.clamp(0, H - 1)[:, None] * W + w.clamp(0, W - 1)[None, :])
                cache[key] = (idx.expand(n, c, ph, pw).contiguous(), None if bool(valid.all()) else valid.float())
            return cache[key]

        def op(env):
            x = env[bottoms[0]]
            H, W = out_size(env, x)
            if known:
                idx, valid = env[bottoms[1]], None
                if idx.dtype != torch.int64:
                    idx = idx.long()
            else:
                idx, valid = fixed_index(x.shape, H, W)
            if valid is None and not overlap:
                env[top] = F.max_unpool2d(x, idx, k, s, 0, (H, W))
                return
            n, c = x.shape[:2]
            vals = x if valid is None else x * valid
            flat_idx = idx.reshape(n, c, -1)
            out = x.new_zeros(n, c, H * W).scatter_add(2, flat_idx, vals.reshape(n, c, -1))
            if overlap and average:
                ones = torch.ones_like(vals) if valid is None else valid.expand_as(vals)
                cnt = x.new_zeros(n, c, H * W).scatter_add(2, flat_idx, ones.reshape(n, c, -1))
                out = out / cnt.clamp(min=1)
            env[top] = out.reshape(n, c, H, W)
        return op

    def _ReLU(self, l):
        F = self.torch.nn.functional
        slope = l.relu_param.negative_slope
        b, t = l.bottom[0], l.top[0]
        inplace = b == t

        def op(env):
            env[t] = F.leaky_relu(env[b], slope, inplace) if slope else F.relu(env[b], inplace)
        return op

    def _Sigmoid(self, l):
        b, t = l.bottom[0], l.top[0]

        def op(env):
            env[t] = self.torch.sigmoid(env[b])
        return op

    def _TanH(self, l):
        b, t = l.bottom[0], l.top[0]

        def op(env):
            env[t] = self.torch.tanh(env[b])
        return op

    def _Threshold(self, l):
        th = l.threshold_param.threshold
        b, t = l.bottom[0], l.top[0]

        def op(env):
            x = env[b].detach()
            env[t] = (x > th).to(x.dtype)
        return op

    def _Dropout(self, l):
        F = self.torch.nn.functional
        r = l.dropout_param.dropout_ratio
        b, t = l.bottom[0], l.top[0]

        def op(env):
            env[t] = F.dropout(env[b], r, True) if r > 0 else env[b]
        return op

    def _Power(self, l):
        p = l.power_param
        b, t = l.bottom[0], l.top[0]

        def op(env):
            y = env[b] * p.scale + p.shift if (p.scale != 1 or p.shift != 0) else env[b]
            env[t] = y if p.power == 1 else y ** p.power
        return op

    def _broadcast(self, v, x, axis):
        return v.reshape([1] * axis + list(v.shape) + [1] * (x.dim() - axis - v.dim()))

    def _Scale(self, l):
        p = l.scale_param
        two = len(l.bottom) > 1
        scale = None if two else self._p(l, 0)
        bias = self._p(l, 1 if not two else 0) if p.bias_term else None
        b, t = list(l.bottom), l.top[0]

        def op(env):
            x = env[b[0]]
            axis = p.axis % x.dim()
            y = x * self._broadcast(env[b[1]] if two else scale, x, axis)
            env[t] = y + self._broadcast(bias, x, axis) if bias is not None else y
        return op

    def _Bias(self, l):
        p = l.bias_param
        two = len(l.bottom) > 1
        bias = None if two else self._p(l, 0)
        b, t = list(l.bottom), l.top[0]

        def op(env):
            x = env[b[0]]
            env[t] = x + self._broadcast(env[b[1]] if two else bias, x, p.axis % x.dim())
        return op

    def _Slice(self, l):
        p = l.slice_param
        axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
        points = list(p.slice_point)
        b, tops = l.bottom[0], list(l.top)

        def op(env):
            x = env[b]
            n = x.shape[axis]
            if points:
                edges = [0] + points + [n]
                sizes = [edges[i + 1] - edges[i] for i in range(len(tops))]
            else:
                sizes = [n // len(tops)] * len(tops)
            for t, y in zip(tops, self.torch.split(x, sizes, axis)):
                env[t] = y
        return op

    def _Concat(self, l):
        p = l.concat_param
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        bs, t = list(l.bottom), l.top[0]

        def op(env):
            env[t] = self.torch.cat([env[b] for b in bs], axis)
        return op

    def _Split(self, l):
        b, tops = l.bottom[0], list(l.top)

        def op(env):
            for t in tops:
                env[t] = env[b]
        return op

    def _Flatten(self, l):
        p = l.flatten_param
        b, t = l.bottom[0], l.top[0]

        def op(env):
            env[t] = self.torch.flatten(env[b], p.axis, p.end_axis)
        return op

    def _Reshape(self, l):
        p = l.reshape_param
        dims = list(p.shape.dim)
        b, t = l.bottom[0], l.top[0]

        def op(env):
            x = env[b]
            shape = list(x.shape)
            start = p.axis % (len(shape) + 1) if p.axis < 0 else p.axis
            end = len(shape) if p.num_axes == -1 else start + p.num_axes
            new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
            env[t] = x.reshape(shape[:start] + new + shape[end:])
        return op

    def _Eltwise(self, l):
        p = l.eltwise_param
        E = pb2().EltwiseParameter
        coeff = list(p.coeff)
        bs, t = list(l.bottom), l.top[0]

        def op(env):
            xs = [env[b] for b in bs]
            if p.operation == E.SUM:
                y = xs[0] * coeff[0] if coeff and coeff[0] != 1 else xs[0]
                for i, x in enumerate(xs[1:], 1):
                    y = y + (x * coeff[i] if coeff and coeff[i] != 1 else x)
            elif p.operation == E.PROD:
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
            else:
                y = xs[0]
                for x in xs[1:]:
                    y = self.torch.maximum(y, x)
            env[t] = y
        return op

    def _Softmax(self, l):
        axis = l.softmax_param.axis
        b, t = l.bottom[0], l.top[0]

        def op(env):
            env[t] = self.torch.softmax(env[b], axis)
        return op

    def _normalization(self, l, default):
        lp = l.loss_param
        N = pb2().LossParameter
        if lp.HasField("normalization"):
            return lp.normalization
        if lp.HasField("normalize"):
            return N.VALID if lp.normalize else N.BATCH_SIZE
        return default

    def _SoftmaxWithLoss(self, l):
        F = self.torch.nn.functional
        N = pb2().LossParameter
        mode = self._normalization(l, N.VALID)
        lp = l.loss_param
        ignore = lp.ignore_label if lp.HasField("ignore_label") else -100
        axis = l.softmax_param.axis
        if axis != 1:
            raise Unsupported(f"layer '{l.name}': softmax axis {axis}")
        b, tops = list(l.bottom), list(l.top)

        def op(env):
            z = env[b[0]]
            y = env[b[1]].reshape(z.shape[0], *z.shape[2:]).long()
            nll = F.cross_entropy(z, y, ignore_index=ignore, reduction="none")
            # Caffe takes log(max(p, FLT_MIN)): a value of at most 87.34 per
            # row, with the gradient p - 1 unclamped
            nll = nll - (nll - nll.clamp(max=CAFFE_MAX_NLL)).detach()
            if mode == N.VALID:
                loss = nll.sum() / max(1, int((y != ignore).sum()))
            else:
                div = {N.FULL: y.numel(), N.BATCH_SIZE: z.shape[0], N.NONE: 1}[mode]
                loss = nll.sum() / div
            env[tops[0]] = loss
            if len(tops) > 1:
                env[tops[1]] = self.torch.softmax(z, 1)
        return op

    def _EuclideanLoss(self, l):
        b, t = list(l.bottom), l.top[0]

        def op(env):  # Caffe checks the counts only (N x D against N x 1 x H x W)
            a = env[b[0]]
            d = a - env[b[1]].reshape(a.shape)
            env[t] = (d * d).sum() / (2 * d.shape[0])
        return op

    def _SigmoidCrossEntropyLoss(self, l):
        F = self.torch.nn.functional
        N = pb2().LossParameter
        if l.loss_param.HasField("ignore_label"):
            raise Unsupported(f"layer '{l.name}': ignore_label")
        mode = self._normalization(l, N.BATCH_SIZE)
        b, t = list(l.bottom), l.top[0]

        def op(env):
            x = env[b[0]]
            total = F.binary_cross_entropy_with_logits(x, env[b[1]].reshape(x.shape), reduction="sum")
            div = {N.FULL: x.numel(), N.VALID: x.numel(), N.BATCH_SIZE: x.shape[0], N.NONE: 1}[mode]
            env[t] = total / max(1, div)
        return op

    def _MaskedEuclideanLoss(self, l):
        N = pb2().LossParameter
        mode = self._normalization(l, N.BATCH_SIZE)
        b, t = list(l.bottom), l.top[0]

        def op(env):
            a, m = env[b[0]], env[b[2]]
            d = a - env[b[1]]
            broadcast = tuple(m.shape) != tuple(a.shape)
            s = (m * d * d).sum()
            if mode == N.FULL:
                z = d.numel()
            elif mode == N.VALID:
                z = max(1.0, float(m.sum()) * (a.shape[1] if broadcast else 1))
            elif mode == N.BATCH_SIZE:
                z = d.shape[0]
            else:
                z = 1
            env[t] = s / (2 * z)
        return op

    def _EntropyLoss(self, l):
        axis = l.softmax_param.axis
        b, t = l.bottom[0], l.top[0]

        def op(env):
            lp = self.torch.log_softmax(env[b], axis)
            env[t] = -(lp.exp() * lp).sum(axis).mean()
        return op

    def _KLSparsityLoss(self, l):
        p = l.kl_sparsity_param
        b, t = l.bottom[0], l.top[0]

        def op(env):
            a = env[b]
            r = a.reshape(a.shape[0], -1).mean(0).clamp(p.eps, 1 - p.eps)
            env[t] = (p.rho * self.torch.log(p.rho / r) + (1 - p.rho) * self.torch.log((1 - p.rho) / (1 - r))).sum()
        return op

    def _PatchRemoval(self, l):
        p = l.patch_removal_param
        b, tops = l.bottom[0], list(l.top)

        def op(env):  # centre patch (RANDOM positions cost the same)
            x = env[b]
            H, W = x.shape[2:]
            y0, x0 = (H - p.size) // 2, (W - p.size) // 2
            out = x.clone()
            out[:, :, y0:y0 + p.size, x0:x0 + p.size] = p.fill
            env[tops[0]] = out
            if len(tops) > 1:
                m = x.new_zeros(x.shape[0], 1, H, W)
                m[:, :, y0:y0 + p.size, x0:x0 + p.size] = 1
                env[tops[1]] = m
        return op

    def _GaussianNoise(self, l):
        std = l.gaussian_noise_param.std
        b, t = l.bottom[0], l.top[0]

        def op(env):
            x = env[b]
            env[t] = x + self.torch.randn_like(x) * std if std > 0 else x
        return op

    def _MaskingNoise(self, l):
        r = l.masking_noise_param.ratio
        b, t = l.bottom[0], l.top[0]

        def op(env):
            x = env[b]
            env[t] = x * (self.torch.rand_like(x) >= r).to(x.dtype) if r > 0 else x
        return op

    def _BatchStats(self, l):
        torch = self.torch
        p = l.batch_stats_param
        unbiased = p.unbiased
        ugs = p.use_global_stats if p.HasField("use_global_stats") else False  # TRAIN
        f = p.moving_average_fraction
        run_mean, run_var, run_w = (self._p(l, j) for j in range(3))
        b, (tm, tv) = l.bottom[0], list(l.top)

        def op(env):
            x = env[b]
            if ugs:
                w = float(run_w[0])
                sc = 0.0 if w == 0 else 1.0 / w
                env[tm], env[tv] = run_mean * sc, run_var * sc
                return
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, correction=1 if unbiased else 0)
            m = x.numel() // x.shape[1] if x.dim() > 1 else x.numel()
            div = m - 1 if unbiased else m
            with torch.no_grad():
                run_w.mul_(f).add_(1)
                run_mean.mul_(f).add_(mean)
                run_var.mul_(f).add_(var, alpha=div / (m - 1 if m > 1 else m))
            env[tm], env[tv] = mean, var
        return op

    def _Normalize(self, l):
        eps = l.normalize_param.eps
        b, t = list(l.bottom), l.top[0]

        def op(env):
            x = env[b[0]]
            mean = self._broadcast(env[b[1]].reshape(-1), x, 1)
            var = self._broadcast(env[b[2]].reshape(-1), x, 1)
            env[t] = (x - mean) * self.torch.rsqrt(var + eps)
        return op

    def _LadderCombinator(self, l):
        torch = self.torch
        p = l.ladder_combinator_param
        a = [self._p(l, j) for j in range(10)]
        b, t = list(l.bottom), l.top[0]

        def op(env):
            z, u = env[b[0]], env[b[1]]
            axis = p.axis % z.dim()
            a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = (self._broadcast(v, z, axis) for v in a)
            mu = a1 * torch.sigmoid(a2 * u + a3) + a4 * u + a5
            v = a6 * torch.sigmoid(a7 * u + a8) + a9 * u + a10
            env[t] = (z - mu) * v + mu
        return op


def torch_optimizer(torch, tnet, s):
    groups = {}
    for key, prm in tnet.learnable().items():
        m = tnet.meta[key]
        groups.setdefault((m["lr_mult"], m["decay_mult"]), []).append(prm)
    pg = [{"params": ps, "lr": s["base_lr"] * lr, "weight_decay": s["weight_decay"] * dm}
          for (lr, dm), ps in groups.items()]
    kind = s["type"]
    if kind == "Adam":
        return torch.optim.Adam(pg, lr=s["base_lr"], betas=(s["momentum"], s["momentum2"]), eps=s["delta"])
    if kind == "AdaGrad":
        return torch.optim.Adagrad(pg, lr=s["base_lr"], eps=s["delta"])
    if kind == "RMSProp":
        return torch.optim.RMSprop(pg, lr=s["base_lr"], alpha=s["rms_decay"], eps=s["delta"])
    return torch.optim.SGD(pg, lr=s["base_lr"], momentum=s["momentum"], nesterov=kind == "Nesterov")


def worker_torch(spec):
    import torch
    from recon_dec.caffe_io import protos
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    inputs = dict(np.load(spec["inputs"]))
    weights_npz = dict(np.load(spec["weights"]))
    meta = spec["meta"]
    result = {}
    if spec["check"]:
        tnet = TorchNet(protos.read_net(spec["check_net"]), weights_npz, meta, inputs)
        total = tnet.forward()
        result["losses"] = {t: (float(tnet.env[t]), w) for t, w in tnet.losses}
        result["shapes"] = {k: list(v.shape) for k, v in tnet.env.items() if hasattr(v, "shape")}
        total.backward()
        grads = {}
        for i, key in enumerate(spec["keys"]):
            prm = tnet.params[key]
            g = prm.grad if isinstance(prm, torch.nn.Parameter) and prm.grad is not None else None
            grads[f"g{i}"] = g.numpy() if g is not None else np.zeros(prm.shape, np.float32)
        np.savez(spec["out_prefix"] + "-torch-grads.npz", **grads)
        result["flops"] = tnet.flops
        del tnet
    tnet = TorchNet(protos.read_net(spec["timed_net"]), weights_npz, meta, inputs)
    fwd_bwd, step = training_steps(tnet, torch_optimizer(torch, tnet, timing_settings(spec["solver_settings"])))
    result["fwd_bwd"] = timed_loop(fwd_bwd, spec["warmup"], spec["iters"])
    result["flops_timed"] = tnet.flops
    if spec["solver"]:
        result["step"] = timed_loop(step, 1, spec["iters"])
    with torch.no_grad():
        result["finite"] = bool(torch.isfinite(tnet.forward()))
    return result


# ---------------------------------------------------------------- --torch-only

def torch_inputs(torch, inputs, classes, seed):
    """make_inputs without numpy: the same distributions from torch's generator."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for top, shape, kind, mean, scale in inputs:
        if kind == "label":
            out[top] = torch.randint(0, classes, shape, generator=g).float()
            continue
        x = torch.rand(shape, generator=g) * 255
        if mean:
            m = torch.tensor(mean if len(mean) == shape[1] else mean[:1] * shape[1])
            x -= m.reshape(1, -1, *([1] * (len(shape) - 2)))
        out[top] = x * (scale if scale else 1.0)
    return out


def _blob_shapes(l, x):
    """Caffe's parameter blob shapes of layer l, x its first bottom."""
    if l.type in ("Convolution", "Deconvolution"):
        p = l.convolution_param
        kh, kw = _hw_conv(p, "kernel_size", None)
        c, n, g = x.shape[1], p.num_output, p.group
        w = [n, c // g, kh, kw] if l.type == "Convolution" else [c, n // g, kh, kw]
        return [w] + ([[n]] if p.bias_term else [])
    if l.type == "InnerProduct":
        p = l.inner_product_param
        k, n = math.prod(x.shape[p.axis:]), p.num_output
        return [[k, n] if p.transpose else [n, k]] + ([[n]] if p.bias_term else [])
    raise Unsupported(f"layer '{l.name}': --torch-only cannot size the parameters of a {l.type} layer "
                      "(Caffe's fillers are not run without pycaffe)")


def _fill(torch, shape, f, g):
    """A tensor drawn like Caffe's filler f (constant 0 when none is given)."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    kind = f.type if f.HasField("type") else "constant"
    if kind == "constant":
        return torch.full(shape, float(f.value))
    if kind == "gaussian":
        return torch.randn(shape, generator=g) * f.std + f.mean
    if kind == "uniform":
        return torch.rand(shape, generator=g) * (f.max - f.min) + f.min
    if kind == "xavier":
        a = math.sqrt(3.0 / fan_in)
        return torch.rand(shape, generator=g) * (2 * a) - a
    if kind == "msra":
        return torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    raise Unsupported(f"filler type {kind}")


def torch_weights(torch, net, inputs, seed, device):
    """(weights, meta) of net as init_weights gives them, without Caffe: each
    layer is built on the blobs of the layers before it (one forward, no
    gradient) to learn its bottom's shape, its blobs drawn from its fillers."""
    g = torch.Generator().manual_seed(seed)
    probe = TorchNet(pb2().NetParameter(), {}, {}, inputs, device)
    env = dict(probe.inputs)
    weights, meta = {}, {}
    with torch.no_grad():
        for l in net.layer:
            build = getattr(probe, "_" + l.type, None)
            if build is None:
                raise Unsupported(f"layer '{l.name}': no PyTorch mapping for type {l.type}")
            try:
                op = build(l)
            except KeyError:  # a parameter not made yet: the layer owns blobs
                fillers = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                           "InnerProduct": "inner_product_param"}
                shapes = _blob_shapes(l, env[l.bottom[0]])
                fp = getattr(l, fillers[l.type])
                for j, shape in enumerate(shapes):
                    key = param_key(l, j)
                    if key in weights:
                        continue
                    spec = l.param[j] if j < len(l.param) else None
                    meta[key] = {"lr_mult": spec.lr_mult if spec is not None else 1.0,
                                 "decay_mult": spec.decay_mult if spec is not None else 1.0,
                                 "learnable": True, "layer": l.name}
                    weights[key] = _fill(torch, shape, fp.weight_filler if j == 0 else fp.bias_filler, g)
                    probe.params[key] = weights[key].to(probe.device)
                op = build(l)
            if op is not None:
                op(env)
    return weights, meta


def torch_only(label, net_path, solver_path, a):
    """One row: PyTorch alone on a.device, no Caffe, no pycaffe, no numpy."""
    import torch
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_vs_pytorch.py: --device cuda, but torch.cuda.is_available() is False")
        # fp32 as Caffe computes it: no TF32 in matmuls or cuDNN convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        sync = torch.cuda.synchronize
    else:
        torch.set_num_threads(a.threads)
        sync = None
    torch.manual_seed(a.seed)
    chw = tuple(int(v) for v in a.input.split(",")) if a.input else None
    _, timed, inputs = prepare(net_path, chw, a.classes)
    s = solver_settings(solver_path)
    arrays = torch_inputs(torch, inputs, a.classes, a.seed)
    weights, meta = torch_weights(torch, timed, arrays, a.seed, dev)
    tnet = TorchNet(timed, weights, meta, arrays, dev)
    fwd_bwd, step = training_steps(tnet, torch_optimizer(torch, tnet, timing_settings(s)))
    fb = timed_loop(fwd_bwd, a.warmup, a.iters, sync)
    st = timed_loop(step, 1, a.iters, sync) if not a.no_solver else []
    with torch.no_grad():
        finite = bool(torch.isfinite(tnet.forward()))
    data = [x for x in inputs if x[2] == "data"]
    row = {"net": label, "file": str(net_path), "mode": "torch-only", "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "torch": torch.__version__, "tf32": False if dev.type == "cuda" else None,
           # cuDNN's own algorithm choice (no benchmark search), as Caffe's heuristics pick
           "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
           "cudnn_benchmark": torch.backends.cudnn.benchmark if dev.type == "cuda" else None,
           "threads": a.threads if dev.type == "cpu" else None,
           "batch": data[0][1][0] if data else None, "input_shapes": {t: sh for t, sh, *_ in inputs},
           "solver": s["type"], "warmup": a.warmup, "iters": a.iters,
           "fwd_bwd_ms": statistics.median(fb) * 1e3, "step_ms": statistics.median(st) * 1e3 if st else None,
           "fwd_bwd_all_ms": [x * 1e3 for x in fb], "step_all_ms": [x * 1e3 for x in st],
           "gflop": sum(f + b for f, b in tnet.flops.values()) / 1e9, "finite": finite}
    return row


# ---------------------------------------------------------------- driver

def run_worker(kind, spec_path, threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), GLOG_minloglevel=os.environ.get("GLOG_minloglevel", "2"))
    out = spec_path + f".{kind}.json"
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, spec_path, out], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return json.loads(pathlib.Path(out).read_text())


def init_weights(check_path, check_net, seed):
    """Caffe's fillers (the net's own initialisation) give the weights of both."""
    import caffe
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    net = caffe.Net(str(check_path), caffe.TRAIN)
    protos_by_name = {l.name: l for l in check_net.layer}
    weights, meta, keys = {}, {}, []
    for name, layer in zip(net._layer_names, net.layers):
        lp = protos_by_name.get(name)
        for j, blob in enumerate(layer.blobs):
            key = param_key(lp, j)
            if key in weights:
                continue
            spec = lp.param[j] if j < len(lp.param) else None
            learnable = lp.type != "BatchStats"
            meta[key] = {"lr_mult": (spec.lr_mult if spec is not None else 1.0) if learnable else 0.0,
                         "decay_mult": spec.decay_mult if spec is not None else 1.0,
                         "learnable": learnable, "layer": name}
            weights[key] = blob.data.copy()
            keys.append(key)
    return weights, meta, keys


def rel_diff(a, b):
    """||a - b|| / ||a||: the norm, not the largest element: one max-pool
    window whose two largest values lie within rounding of each other routes
    its gradient to the other one in the other framework, which moves single
    weight-gradient elements by ~1e-2 of the largest (measured: Caffe's
    gradient matches float64 from Caffe's own activations to 1e-7, PyTorch's
    from PyTorch's)."""
    n = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b)) / max(n, 1e-30) if a.size else 0.0


def bench_one(label, net_path, solver_path, args, work):
    from recon_dec.caffe_io import protos
    chw = tuple(int(v) for v in args.input.split(",")) if args.input else None
    check, timed, inputs = prepare(net_path, chw, args.classes)
    d = pathlib.Path(tempfile.mkdtemp(prefix="bvp-", dir=work))
    check_path, timed_path = d / "check.prototxt", d / "timed.prototxt"
    check_path.write_text(protos.to_text(check))
    timed_path.write_text(protos.to_text(timed))
    s = solver_settings(solver_path)
    write_caffe_solver(d / "solver.prototxt", timed_path, s)
    arrays = make_inputs(inputs, args.classes, args.seed)
    np.savez(d / "inputs.npz", **arrays)
    weights, meta, keys = init_weights(check_path, check, args.seed)
    np.savez(d / "weights.npz", **weights)
    spec = {"check_net": str(check_path), "timed_net": str(timed_path), "caffe_solver": str(d / "solver.prototxt"),
            "solver_settings": s, "inputs": str(d / "inputs.npz"), "weights": str(d / "weights.npz"),
            "meta": meta, "keys": keys, "threads": args.threads, "warmup": args.warmup, "iters": args.iters,
            "solver": not args.no_solver, "out_prefix": str(d / "r")}
    runs = {"caffe": [], "torch": []}
    for r in range(args.rounds):
        for kind in ("caffe", "torch"):
            spec["check"] = r == 0
            sp = d / f"spec-{kind}-{r}.json"
            sp.write_text(json.dumps(spec))
            runs[kind].append(run_worker(kind, str(sp), args.threads))
            time.sleep(0.2)
    c0, t0 = runs["caffe"][0], runs["torch"][0]
    # equal work: losses, shapes and gradients of the check nets
    loss_rel = 0.0
    for top, (cv, w) in c0["losses"].items():
        tv = t0["losses"][top][0]
        loss_rel = max(loss_rel, abs(cv - tv) / max(abs(cv), 1e-6))
    total_c = sum(v * w for v, w in c0["losses"].values())
    total_t = sum(v * w for v, w in t0["losses"].values())
    shape_bad = [k for k, v in t0["shapes"].items() if k in c0["shapes"] and c0["shapes"][k] != v]
    gc, gt = np.load(spec["out_prefix"] + "-caffe-grads.npz"), np.load(spec["out_prefix"] + "-torch-grads.npz")
    grad_rel, worst = 0.0, None
    for i, key in enumerate(keys):
        if not meta[key]["learnable"] or meta[key]["lr_mult"] == 0:
            continue
        r_ = rel_diff(gc[f"g{i}"], gt[f"g{i}"])
        if r_ > grad_rel:
            grad_rel, worst = r_, key
    flops = sum(f + b for f, b in t0["flops_timed"].values())

    def med(kind, what):
        xs = [x for run in runs[kind] for x in run.get(what, [])]
        return statistics.median(xs) * 1e3 if xs else float("nan")
    batch = " + ".join("x".join(str(v) for v in s_[1]) for s_ in inputs if s_[2] == "data")
    row = {"net": label, "file": str(net_path), "inputs": batch, "solver": s["type"],
           "caffe_ms": med("caffe", "fwd_bwd"), "torch_ms": med("torch", "fwd_bwd"),
           "caffe_step_ms": med("caffe", "step"), "torch_step_ms": med("torch", "step"),
           "gflop": flops / 1e9, "loss_total": (total_c, total_t), "loss_rel": loss_rel,
           "grad_rel": grad_rel, "grad_worst": worst, "shape_mismatch": shape_bad,
           "finite": all(run["finite"] for k in runs for run in runs[k]),
           "ok": loss_rel <= args.rtol and grad_rel <= args.grad_rtol and not shape_bad}
    row["ratio"] = row["torch_ms"] / row["caffe_ms"]
    row["step_ratio"] = row["torch_step_ms"] / row["caffe_step_ms"]
    return row


def standard_rows(args, work):
    """Generate the nets of the standard rows with `recon-dec generate` into work."""
    from recon_dec import cli
    models = REPO / "models"
    rows = []
    want = set(args.rows.split(","))

    def gen(out, argv):
        if not (out / "README.md").exists():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                rc = cli.main(["generate", *argv, "--out", str(out), "--force"])
            if rc != 0:
                raise SystemExit(f"recon-dec generate {' '.join(argv)} failed:\n{buf.getvalue()}")

    def last_solver(variant_dir):
        plan = json.loads((variant_dir / "plan.json").read_text())
        return variant_dir / plan["stages"][-1]["solver"]

    def stage(variant_dir, sid):
        """(train net, solver) of one stage of the plan."""
        plan = json.loads((variant_dir / "plan.json").read_text())
        st = next(s for s in plan["stages"] if s["id"] == sid)
        return variant_dir / st["train_net"], variant_dir / st["solver"]

    if "svgg" in want:
        out = work / "small_vgg"
        gen(out, ["--net", str(REPO / "recon_dec" / "models" / "small_vgg" / "deploy.prototxt"),
                  "--variant", "baseline", "--variant", "swwae-all", "--batch", "64"])
        for v, name in (("baseline", "small VGG baseline"), ("swwae-all", "small VGG SWWAE-all")):
            rows.append((name, out / v / "train_val.prototxt", last_solver(out / v)))
    for size in (64, 112):
        if f"vgg{size}" in want:
            out = work / f"vgg16_{size}"
            gen(out, ["--net", str(models / "vgg16" / "deploy.prototxt"), "--variant", "baseline",
                      "--variant", "swwae-all", "--input-size", str(size), "--batch", "8"])
            for v, name in (("baseline", f"VGG16 baseline {size}px"), ("swwae-all", f"VGG16 SWWAE-all {size}px")):
                rows.append((name, out / v / "train_val.prototxt", last_solver(out / v)))
    if "ladder" in want:
        out = work / "ladder"
        gen(out, ["--method", "ladder", "--net", str(models / "ladder" / "mlp.prototxt"), "--variant", "full",
                  "--variant", "supervised", "--labeled-source", "/unused/labeled", "--train-source",
                  "/unused/unlabeled", "--batch", "100"])
        for v, name in (("full", "ladder MLP full"), ("supervised", "ladder MLP supervised")):
            rows.append((name, out / v / "train_val.prototxt", last_solver(out / v)))
    if "ae" in want:
        out = work / "autoencoder"
        gen(out, ["--method", "autoencoder", "--net", str(models / "mnist_autoencoder" / "deploy.prototxt"),
                  "--variant", "ae", "--train-source", "/unused/train"])
        # the reconstruction stage (the variant's train_val is the supervised finetune)
        rows.append(("MNIST autoencoder (ae, pretrain)", *stage(out / "ae", "pretrain")))
    if "inversion" in want:
        out = work / "inversion"
        gen(out, ["--method", "inversion", "--net", str(models / "inversion" / "smallcnn_max.prototxt"),
                  "--variant", "semi", "--labeled-source", "/unused/labeled", "--train-source", "/unused/unlabeled"])
        rows.append(("inversion SmallCNN semi", out / "semi" / "train_val.prototxt", last_solver(out / "semi")))
    return rows


def fmt_table(rows, threads):
    lines = ["| net | inputs (batch x C x H x W) | Caffe ms | PyTorch ms | PyTorch / Caffe | Caffe step ms | "
             "PyTorch step ms | step PyTorch / Caffe | GFLOP / it. | Caffe GFLOP/s | PyTorch GFLOP/s | "
             "check (loss, grad rel. diff) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gf = r["gflop"]
        lines.append(
            f"| {r['net']} | {r['inputs']} | {r['caffe_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} | "
            f"{r['caffe_step_ms']:.1f} | {r['torch_step_ms']:.1f} | {r['step_ratio']:.2f} | {gf:.2f} | "
            f"{gf / r['caffe_ms'] * 1e3:.1f} | {gf / r['torch_ms'] * 1e3:.1f} | "
            f"{'ok' if r['ok'] else 'MISMATCH'} ({r['loss_rel']:.0e}, {r['grad_rel']:.0e}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nets", nargs="*", help="train_val prototxts (their plan.json gives the input shape and solver)")
    ap.add_argument("--standard", action="store_true", help="generate and run the standard rows (see --rows)")
    ap.add_argument("--rows", default="svgg,vgg64,ladder",
                    help="standard rows: svgg, vgg64, vgg112, ladder, ae, inversion (default svgg,vgg64,ladder)")
    ap.add_argument("--solver", help="solver prototxt for the nets given (default: their plan's last stage)")
    ap.add_argument("--input", help="C,H,W of the data (default: the plan's input, the data layer's crop)")
    ap.add_argument("--classes", type=int, default=10, help="labels are drawn in [0, CLASSES) (default 10)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both (default: all cores)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per round (default 10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating Caffe/PyTorch rounds (default 2)")
    ap.add_argument("--no-solver", action="store_true", help="time forward + backward only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-4, help="largest relative loss difference accepted")
    ap.add_argument("--grad-rtol", type=float, default=2e-2,
                    help="largest ||caffe - pytorch|| / ||caffe|| of a parameter's gradient accepted (default 2e-2)")
    ap.add_argument("--work", default="out/bench-vs-pytorch", help="generated nets and temporary files")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--torch-only", action="store_true",
                    help="PyTorch alone (no Caffe, no pycaffe, no numpy; caffe_pb2 from PYTHONPATH, e.g. a GPU "
                         "bundle's python/): median ms of forward + backward and of a step, weights from the "
                         "prototxt's fillers")
    ap.add_argument("--device", default="cpu",
                    help="--torch-only: cpu or cuda (fp32, TF32 off; synchronized timings) (default cpu)")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kind, spec_path, out = a.worker
        spec = json.loads(pathlib.Path(spec_path).read_text())
        res = (worker_caffe if kind == "caffe" else worker_torch)(spec)
        pathlib.Path(out).write_text(json.dumps(res))
        return 0
    if a.torch_only:
        return main_torch_only(ap, a)
    if a.device != "cpu":
        ap.error("--device is for --torch-only (the comparison with Caffe runs on the CPU)")
    try:
        import torch  # noqa: F401  (fail early, before generating anything)
    except ImportError:
        raise SystemExit("bench_vs_pytorch.py: PyTorch is missing: sh bench/setup_bench_venv.sh, then run this "
                         "script with .venv-bench/bin/python")
    work = pathlib.Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    todo = standard_rows(a, work) if a.standard else []
    for n in a.nets:
        plan = find_plan(n)
        solver = a.solver
        if solver is None and plan is not None:
            p = json.loads(plan.read_text())
            solver = plan.parent / p["stages"][-1]["solver"]
        todo.append((str(n), pathlib.Path(n), solver))
    if not todo:
        ap.error("give train_val prototxts or --standard")
    print(f"threads {a.threads} (torch.set_num_threads, OPENBLAS_NUM_THREADS); {a.rounds} rounds x {a.iters} "
          f"iterations after {a.warmup} warm-up; median iteration; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset: detected)')}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for label, path, solver in todo:
        t = time.time()
        try:
            row = bench_one(label, path, solver, a, work)
        except Unsupported as e:
            print(f"{label}: skipped: {e}", flush=True)
            continue
        rows.append(row)
        print(f"{label}: Caffe {row['caffe_ms']:.1f} ms, PyTorch {row['torch_ms']:.1f} ms (ratio {row['ratio']:.2f}); "
              f"step {row['caffe_step_ms']:.1f} / {row['torch_step_ms']:.1f} ms; losses {row['loss_total'][0]:.6g} / "
              f"{row['loss_total'][1]:.6g} (max rel. diff {row['loss_rel']:.1e}), gradients max rel. diff "
              f"{row['grad_rel']:.1e} ({row['grad_worst']}){'' if row['ok'] else ' MISMATCH'}"
              f"{' shapes differ: ' + ', '.join(row['shape_mismatch']) if row['shape_mismatch'] else ''}"
              f"{'' if row['finite'] else ' (a timed loss went non-finite)'} "
              f"[{time.time() - t:.0f} s]", flush=True)
    print()
    print(fmt_table(rows, a.threads))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1



def main_torch_only(ap, a):
    if a.standard or not a.nets:
        ap.error("--torch-only: give train_val prototxts (not --standard)")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("bench_vs_pytorch.py: PyTorch is missing (--torch-only needs torch, nothing else)")
    pb2_file = load_standalone_pb2()
    rows = []
    for n in a.nets:
        solver = a.solver
        plan = find_plan(n)
        if solver is None and plan is not None:
            solver = plan.parent / json.loads(plan.read_text())["stages"][-1]["solver"]
        try:
            row = torch_only(str(n), pathlib.Path(n), solver, a)
        except Unsupported as e:
            raise SystemExit(f"{n}: --torch-only: {e}")
        row["caffe_pb2"] = str(pb2_file)
        rows.append(row)
        print(f"{n}: PyTorch {row['device']}{' (' + row['gpu'] + ')' if row['gpu'] else ''}: forward + backward "
              f"{row['fwd_bwd_ms']:.2f} ms, step {row['step_ms'] if row['step_ms'] is None else round(row['step_ms'], 2)}"
              f" ms (median of {a.iters}; batch {row['batch']}){'' if row['finite'] else ' (non-finite loss)'}",
              flush=True)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
