"""Helpers for the generate tests: read generated nets, turn a train_val
net's data layers into Input layers (random data instead of an LMDB), and
build pycaffe nets from them."""
import json
import os
import pathlib

import numpy as np
from caffe.proto import caffe_pb2
from google.protobuf import text_format

REPO = pathlib.Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
VGG16 = str(MODELS / "vgg16" / "deploy.prototxt")
VGG16_V1 = str(MODELS / "vgg16" / "deploy_v1.prototxt")
ALEXNET = str(MODELS / "alexnet" / "deploy.prototxt")
ALEXNET_LRN = str(MODELS / "alexnet" / "deploy_lrn.prototxt")
SMALL = str(REPO / "recon_dec" / "models" / "small_vgg" / "deploy.prototxt")

PARAM_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def read_net(path):
    n = caffe_pb2.NetParameter()
    text_format.Merge(pathlib.Path(path).read_text(), n)
    return n


def layers_by_name(path):
    return {l.name: l for l in read_net(path).layer}


def as_input_net(path, channels, batch=1, out=None, size=None):
    """The TRAIN view of a generated net with its data layer replaced by
    Input layers for data and label; force_backward so every layer gets a
    gradient. Returns the path of the rewritten prototxt."""
    n = read_net(path)
    res = caffe_pb2.NetParameter()
    res.name = n.name
    res.force_backward = True
    for l in n.layer:
        if any(r.HasField("phase") and r.phase == caffe_pb2.TEST for r in l.include):
            continue
        if l.type in ("Data", "ImageData"):
            d = res.layer.add()
            d.name, d.type = "data", "Input"
            d.top.extend(["data", "label"])
            crop = l.transform_param.crop_size or size
            d.input_param.shape.add().dim.extend([batch, channels, crop, crop])
            d.input_param.shape.add().dim.extend([batch])
            continue
        c = res.layer.add()
        c.CopyFrom(l)
        if l.type == "Input":
            c.input_param.shape[0].dim[0] = batch
    out = out or str(path) + ".input.prototxt"
    pathlib.Path(out).write_text(str(res))
    return out


def fill_random(net, rng, scale=0.05):
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * scale


def forward_backward(net, rng, classes):
    """Random image and labels, one forward and backward; returns the
    outputs. Asserts every blob and diff is finite."""
    d = net.blobs["data"]
    d.data[...] = rng.uniform(-100, 100, d.data.shape)
    if "label" in net.blobs:
        net.blobs["label"].data[...] = rng.integers(0, classes, net.blobs["label"].data.shape)
    out = net.forward()
    net.backward()
    for name, b in net.blobs.items():
        assert np.all(np.isfinite(b.data)), f"{name} data not finite"
        assert np.all(np.isfinite(b.diff)), f"{name} diff not finite"
    for name, ps in net.params.items():
        for p in ps:
            assert np.all(np.isfinite(p.diff)), f"{name} param diff not finite"
    return out


def all_nets(out_dir):
    """Every generated net prototxt (not solvers) under out_dir."""
    return sorted(str(p) for p in pathlib.Path(out_dir).rglob("*.prototxt")
                  if p.name != "solver.prototxt" and not p.name.endswith(".input.prototxt"))


def load_plan(path):
    return json.loads(pathlib.Path(path).read_text())


def plan_dirs(out_dir):
    return sorted(os.path.dirname(str(p)) for p in pathlib.Path(out_dir).rglob("plan.json"))


def options(**kw):
    """Generic generate Options and the paper method's options from one set
    of keywords (data fields go to the DataSpec, ``data`` names its kind)."""
    from recon_dec.graph.data_layers import DataSpec
    from recon_dec.methods import swwae
    from recon_dec.runners.generate import Options
    data = {k: kw.pop(k) for k in list(kw) if k in DataSpec.__dataclass_fields__}
    if "data" in kw:
        data["kind"] = kw.pop("data")
    method = {k: kw.pop(k) for k in list(kw) if k in swwae.Options.__dataclass_fields__}
    return Options(data=DataSpec(**data), **kw), swwae.Options(**method)


def generate(net, variants, out, **kw):
    """recon-dec generate (the paper's method) with keyword options."""
    from recon_dec.runners import generate as gen
    opts, method_options = options(**kw)
    return gen.generate(net, variants, out, opts, method_options=method_options)
