"""Every generated net runs forward + backward in pycaffe (CPU) on random
data with finite values, every decoder output has its target's shape,
pretrained weights arrive by name, and each stage's snapshot loads into the
next stage as plan.json says. VGG16 and AlexNet at reduced input sizes
(32 and 67: the same macro-layer structure, pool5 1x1) to stay fast."""
import os

import numpy as np
import pytest
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from generate_helpers import (ALEXNET, ALEXNET_LRN, SMALL, VGG16, all_nets, as_input_net, fill_random,
                              forward_backward, load_plan, plan_dirs, read_net)
from generate_helpers import generate

CASES = [  # net, input size, channels, classes
    (VGG16, 32, 3, 1000),
    (ALEXNET, 67, 3, 1000),
    (ALEXNET_LRN, 67, 3, 1000),
    (SMALL, 32, 1, 10),
    (SMALL, 30, 1, 10),  # odd sizes: 15 -> 8 unpools to 16, so the pre-pool blob gives the size
]


def _source_weights(caffe, net_path, size, channels, tmp_path, rng):
    """A caffemodel saved from the classifier itself (random weights)."""
    n = read_net(net_path)
    for l in n.layer:
        if l.type == "Input":
            l.input_param.shape[0].dim[:] = [1, channels, size, size]
    p = tmp_path / "source.prototxt"
    p.write_text(str(n))
    net = caffe.Net(str(p), caffe.TEST)
    fill_random(net, rng)
    w = tmp_path / "source.caffemodel"
    net.save(str(w))
    return str(w), {k: [b.data.copy() for b in v] for k, v in net.params.items()}


@pytest.mark.parametrize("net_path,size,channels,classes", CASES,
                         ids=[f"{os.path.basename(os.path.dirname(c[0]))}-{os.path.basename(c[0])}-{c[1]}" for c in CASES])
def test_every_net_runs_and_pretrained_weights_arrive(caffe, tmp_path, net_path, size, channels, classes):
    rng = np.random.default_rng(0)
    weights, source = _source_weights(caffe, net_path, size, channels, tmp_path, rng)
    out = tmp_path / "out"
    generate(net_path, ["all"], out, weights=weights, input_size=size, deploy_batch=1,
             mean=(0.0,) if channels == 1 else None)
    nets = all_nets(out)
    assert len(nets) > 20
    for path in nets:
        phase = caffe.TEST if path.endswith("deploy.prototxt") else caffe.TRAIN
        net = caffe.Net(as_input_net(path, channels), weights, phase)
        # every encoder parameter of the classifier arrives, by name
        for name, blobs in source.items():
            if name in net.params:
                for a, b in zip(blobs, net.params[name]):
                    np.testing.assert_array_equal(a, b.data, err_msg=f"{path}: {name}")
        assert {n for n in source if n in net.params} >= {n for n in net.params if not n.startswith("dec:")}
        forward_backward(net, rng, classes)
        proto = read_net(path)
        for l in proto.layer:  # every decoder output has its target's shape
            if l.type == "EuclideanLoss":
                a, b = l.bottom
                assert net.blobs[a].data.shape == net.blobs[b].data.shape, (path, l.name)
                assert net.blobs[l.top[0]].data.size == 1
            if l.type == "Unpooling" and len(l.bottom) == (3 if l.unpooling_param.switches == 1 else 2):
                assert size == 30  # a reference bottom only where the formula misses
                assert net.blobs[l.top[0]].data.shape == net.blobs[l.bottom[-1]].data.shape
        if path.endswith("deploy.prototxt") and "dec:data" in net.blobs:
            assert net.blobs["dec:data"].data.shape == net.blobs["data"].data.shape


def _train_net(caffe, plan_dir, stage, channels, weights=None):
    path = as_input_net(os.path.join(plan_dir, stage["train_net"]), channels)
    if weights:
        return caffe.Net(path, weights, caffe.TRAIN)
    return caffe.Net(path, caffe.TRAIN)


@pytest.mark.parametrize("net_path,size,channels", [(VGG16, 32, 3), (SMALL, 32, 1)], ids=["vgg16", "small_vgg"])
def test_stage_snapshots_load_into_next_stage(caffe, tmp_path, net_path, size, channels):
    """The caffemodel of stage N (saved from its net) initialises stage M's
    layers listed in the plan's ``@stage:N`` entry, values equal."""
    rng = np.random.default_rng(1)
    out = tmp_path / "out"
    generate(net_path, ["sae-all", "swwae-first", "swwae-layerwise"], out, input_size=size, recon=False)
    for v in ("sae-all", "swwae-first", "swwae-layerwise"):
        d = str(out / v)
        plan = load_plan(os.path.join(d, "plan.json"))
        saved = {}
        for stage in plan["stages"]:
            inits = [i for i in stage["init"] if i["weights"].startswith("@stage:")]
            for init in inits:
                prev = init["weights"].split(":")[1]
                net = _train_net(caffe, d, stage, channels, saved[prev][0])
                for name in init["layers"]:
                    assert name in net.params, (v, stage["id"], name)
                    for a, b in zip(saved[prev][1][name], net.params[name]):
                        np.testing.assert_array_equal(a, b.data, err_msg=f"{v} step {stage['id']}: {name}")
                assert {n for n in net.params if n.startswith("dec:")} == \
                    {n for n in init["layers"] if n.startswith("dec:")}
            net = _train_net(caffe, d, stage, channels)
            fill_random(net, rng)
            w = str(tmp_path / f"{v}-step{stage['id']}.caffemodel")
            net.save(w)
            saved[stage["id"]] = (w, {k: [b.data.copy() for b in p] for k, p in net.params.items()})
