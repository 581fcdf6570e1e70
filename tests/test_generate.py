"""`recon-dec generate`: the generated nets against PAPER_FACTS section 1
(names, kinds, shapes, loss weights, lr_mults), instantiated in pycaffe."""
import os
import pathlib

import numpy as np
import pytest

from generate_helpers import (ALEXNET, ALEXNET_LRN, SMALL, VGG16, VGG16_V1, PARAM_TYPES, all_nets,
                              as_input_net, fill_random, forward_backward, layers_by_name, load_plan,
                              read_net)
from generate_helpers import generate
from recon_dec.graph import encoder
from recon_dec.methods import swwae as decoders

VGG_TABLE_S1 = {1: 3e-9, 2: 1e-8, 3: 3e-12, 4: 1e-12, 5: 1e-11}
ALL_WEIGHTS = {"dec:loss@conv4_3": 1e-10, "dec:loss@conv3_3": 1e-12, "dec:loss@conv2_2": 1e-12,
               "dec:loss@conv1_2": 1e-12, "dec:loss@data/scaled": 1e-4}

# PAPER_FACTS 1: SWWAE-all's decoder, VGG16: (name, type, kernel, pad, num_output, top)
SWWAE_ALL_VGG16 = [
    ("dec:conv5_3", "Deconvolution", 3, 1, 512, "dec:conv5_2"),
    ("dec:conv5_2", "Deconvolution", 3, 1, 512, "dec:conv5_1"),
    ("dec:conv5_1", "Deconvolution", 3, 1, 512, "dec:conv4_3"),
    ("dec:conv4_3", "Deconvolution", 3, 1, 512, "dec:conv4_2"),
    ("dec:conv4_2", "Deconvolution", 3, 1, 512, "dec:conv4_1"),
    ("dec:conv4_1", "Deconvolution", 3, 1, 256, "dec:conv3_3"),
    ("dec:conv3_3", "Deconvolution", 3, 1, 256, "dec:conv3_2"),
    ("dec:conv3_2", "Deconvolution", 3, 1, 256, "dec:conv3_1"),
    ("dec:conv3_1", "Deconvolution", 3, 1, 128, "dec:conv2_2"),
    ("dec:conv2_2", "Deconvolution", 3, 1, 128, "dec:conv2_1"),
    ("dec:conv2_1", "Deconvolution", 3, 1, 64, "dec:conv1_2"),
    ("dec:conv1_2", "Deconvolution", 3, 1, 64, "dec:conv1_1"),
    ("dec:conv1_1", "Deconvolution", 3, 1, 3, "dec:data"),
]
LAYERWISE_OUTPUTS = {"dec:conv5_1": "dec:conv4_3[2]", "dec:conv4_1": "dec:conv3_3[2]",
                     "dec:conv3_1": "dec:conv2_2[2]", "dec:conv2_1": "dec:conv1_2[2]",
                     "dec:conv1_1": "dec:data"}
# full-size VGG16 shapes of each decoder blob (batch axis left out)
VGG16_DEC_SHAPES = {"dec:conv5_3/unpool": (512, 14, 14), "dec:conv4_3": (512, 14, 14),
                    "dec:conv4_3/unpool": (512, 28, 28), "dec:conv3_3": (256, 28, 28),
                    "dec:conv3_3/unpool": (256, 56, 56), "dec:conv2_2": (128, 56, 56),
                    "dec:conv2_2/unpool": (128, 112, 112), "dec:conv1_2": (64, 112, 112),
                    "dec:conv1_2/unpool": (64, 224, 224), "dec:data": (3, 224, 224)}


@pytest.fixture(scope="module")
def vgg_full(tmp_path_factory):
    out = tmp_path_factory.mktemp("vgg_full")
    return generate(VGG16, ["all"], out, val_source="/nonexistent/val_lmdb"), out


def _param_layers(path):
    return [l for l in read_net(path).layer if l.type in PARAM_TYPES and l.name.startswith("dec:")]


def test_macro_layer_analysis():
    enc = encoder.load_encoder(VGG16)
    assert [len(m.convs) for m in enc.macros] == [2, 2, 3, 3, 3]
    assert [m.out_shape for m in enc.macros] == [(64, 112, 112), (128, 56, 56), (256, 28, 28),
                                                (512, 14, 14), (512, 7, 7)]
    assert [m.output_blob for m in enc.macros] == ["conv1_2/pool", "conv2_2/pool", "conv3_3/pool",
                                                   "conv4_3/pool", "conv5_3/pool"]
    assert [l.name for l in enc.fc_layers] == ["fc6", "fc7", "fc8"]
    names = [l.name for l in enc.layers]
    assert "conv1_1/relu" in names and "fc6/dropout" in names and "fc7/dropout" in names
    alex = encoder.load_encoder(ALEXNET)
    assert [m.out_shape[1] for m in alex.macros] == [27, 13, 6]
    assert alex.layer("conv1").out_shape == (96, 55, 55)


def test_swwae_all_layers_match_paper_facts(vgg_full, caffe):
    result, out = vgg_full
    for path in (out / "swwae-all" / "deploy.prototxt", out / "swwae-all" / "step4" / "train_val.prototxt",
                 out / "swwae-all" / "step3" / "train_val.prototxt"):
        got = []
        for l in _param_layers(path):
            cp = l.convolution_param
            got.append((l.name, l.type, cp.kernel_size[0], cp.pad[0], cp.num_output, l.top[0]))
            assert cp.weight_filler.type == "gaussian" and cp.weight_filler.std == pytest.approx(0.001)
            assert cp.bias_filler.value == 0 and not cp.group > 1
        assert got == SWWAE_ALL_VGG16
    layers = layers_by_name(out / "swwae-all" / "step4" / "train_val.prototxt")
    for name, *_ in SWWAE_ALL_VGG16:
        ps = layers[name].param
        assert [(p.lr_mult, p.decay_mult) for p in ps] == [(1, 1), (2, 0)]
        relu = layers.get(name + "/relu")
        assert (relu is None) == (name == "dec:conv1_1")  # the image output is linear
    for name in ("conv5_3/pool", "conv1_2/pool"):
        assert list(layers[name].top) == [name, name + "-mask"]
    unpool = layers["dec:conv4_3/unpool"]
    assert unpool.type == "Unpooling" and list(unpool.bottom) == ["dec:conv4_3", "conv4_3/pool-mask"]
    assert unpool.pooling_param.kernel_size == 2 and unpool.pooling_param.stride == 2
    # full-size shapes: construction only (no forward at 224 on CPU)
    net = caffe.Net(str(out / "swwae-all" / "deploy.prototxt"), caffe.TEST)
    for blob, shape in VGG16_DEC_SHAPES.items():
        assert net.blobs[blob].data.shape[1:] == shape, blob


def test_sae_layerwise_layers(vgg_full):
    _, out = vgg_full
    for v in ("sae-layerwise", "swwae-layerwise"):
        path = out / v / "step4" / "train_val.prototxt"
        got = [(l.name, l.type, l.convolution_param.kernel_size[0], l.convolution_param.pad[0],
                l.convolution_param.num_output) for l in _param_layers(path)]
        assert sorted(got) == sorted(x[:5] for x in SWWAE_ALL_VGG16)
        layers = layers_by_name(path)
        for name, top in LAYERWISE_OUTPUTS.items():
            assert layers[name].top[0] == top
        # decoder k reads the encoder's pool_k
        u = layers["dec:conv4_3/unpool"]
        assert u.bottom[0] == "conv4_3/pool"
        assert (len(u.bottom) == 2) == (v == "swwae-layerwise")
        if v == "sae-layerwise":
            assert u.unpooling_param.switches == u.unpooling_param.FIXED
            assert "conv4_3/pool-mask" not in layers["conv4_3/pool"].top
        assert layers["dec:loss@conv4_3"].bottom[:] == ["dec:conv4_3[2]", "conv4_3/pool"]


def _losses(path):
    return {l.name: l.loss_weight[0] for l in read_net(path).layer if l.type in ("EuclideanLoss", "SoftmaxWithLoss")}


def test_loss_weights_and_frozen_encoder(vgg_full):
    _, out = vgg_full
    expected = {"first": {"dec:loss@data/scaled": 1e-4}, "all": ALL_WEIGHTS, "layerwise": ALL_WEIGHTS}
    for v, (mode, wire) in decoders.VARIANTS.items():
        plan = load_plan(out / v / "plan.json")
        steps = [int(s["id"]) for s in plan["stages"]]
        assert steps == {"first": [2, 3, 4], "all": [2, 3, 4], "layerwise": [2, 4], None: [4]}[wire]
        for s in plan["stages"]:
            net = out / v / s["train_net"]
            losses = _losses(net)
            assert losses.pop("loss") == 1.0  # softmax, weight 1 everywhere
            if wire is None:
                want = {}
            elif int(s["id"]) == 2:
                want = {k: 1.0 for k in ALL_WEIGHTS}  # published: all 1 in step 2
            else:
                want = expected[wire]
            assert losses.keys() == want.keys(), (v, int(s["id"]))
            for k, w in want.items():
                assert losses[k] == pytest.approx(w, rel=1e-6), (v, int(s["id"]), k)
            layers = read_net(net).layer
            enc = [l for l in layers if l.type in ("Convolution", "InnerProduct") and not l.name.startswith("dec:")]
            assert len(enc) == 16
            for l in enc:
                if int(s["id"]) in (2, 3):
                    assert [(p.lr_mult, p.decay_mult) for p in l.param] == [(0, 0), (0, 0)], (v, l.name)
                else:
                    assert [(p.lr_mult, p.decay_mult) for p in l.param] == [(1, 1), (2, 0)], (v, l.name)
            if int(s["id"]) == 2:  # Table S-1 as lr_mult relative to base_lr
                solver = (out / v / s["solver"]).read_text()
                base = float(solver.split("base_lr:")[1].split()[0])
                by_name = {l.name: l for l in layers}
                for k, first_conv in zip(range(1, 6), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")):
                    p = by_name["dec:" + first_conv].param
                    assert p[0].lr_mult * base == pytest.approx(VGG_TABLE_S1[k], rel=1e-6)
                    assert p[1].lr_mult * base == pytest.approx(2 * VGG_TABLE_S1[k], rel=1e-6)
                assert "batch_size: 16" in (out / v / s["train_net"]).read_text()
                assert "momentum: 0.9" in solver
            if int(s["id"]) == 4:
                solver = (out / v / s["solver"]).read_text()
                assert s["batch"] * s["iter_size"] == 64 and "iter_size: 4" in solver


def test_data_scaled_and_data_layers(vgg_full):
    _, out = vgg_full
    layers = read_net(out / "swwae-all" / "step4" / "train_val.prototxt").layer
    data = [l for l in layers if l.type == "Data"]
    assert len(data) == 2 and data[0].transform_param.mirror and not data[1].transform_param.mirror
    assert data[0].transform_param.crop_size == 224
    assert list(data[0].transform_param.mean_value) == pytest.approx([103.939, 116.779, 123.68])
    assert data[1].data_param.source == "/nonexistent/val_lmdb"
    scaled = [l for l in layers if l.name == "data/scaled"][0]
    assert scaled.type == "Power" and scaled.power_param.scale == pytest.approx(1 / 255)
    assert [l.name for l in layers if l.type == "Accuracy"] == ["accuracy/top-1", "accuracy/top-5"]


def test_plan_format_and_readme(vgg_full):
    result, out = vgg_full
    from recon_dec.runners import plan as plans
    for v, path in result["plans"].items():
        plan = plans.load(path)  # the training driver's own reader
        assert plan["format"] == "recon-dec-plan/2" and plan["variant"] == v and plan["method"] == "swwae"
        for s in plan["stages"]:
            assert (pathlib.Path(plan["_dir"]) / s["solver"]).is_file()
            assert (pathlib.Path(plan["_dir"]) / s["train_net"]).is_file()
            assert s["output"] == f"{s['snapshot_prefix']}_iter_{s['max_iter']}.caffemodel"
            solver = (pathlib.Path(plan["_dir"]) / s["solver"]).read_text()
            assert f'net: "{s["train_net"]}"' in solver and f"max_iter: {s['max_iter']}" in solver
            assert f'snapshot_prefix: "{s["snapshot_prefix"]}"' in solver
    readme = (out / "README.md").read_text()
    assert "macro-layer 5: conv5_1, conv5_2, conv5_3" in readme
    assert "cd swwae-all && caffe train -solver step3/solver.prototxt" in readme
    assert "not published, our choice" in readme
    for f in result["files"]:
        assert f"`{os.path.relpath(f, out)}`" in readme
    recon = sorted(os.path.relpath(p, out) for v, p in result["plans"].items() if v.startswith("recon/"))
    assert recon == sorted([f"recon/sae-first/layer{k}/plan.json" for k in range(1, 6)]
                           + [f"recon/swwae-first/layer{k}/plan.json" for k in range(1, 9)])


def test_v1_prototxt_gives_the_same_nets(vgg_full, tmp_path):
    _, out = vgg_full
    out_v1 = tmp_path / "v1"
    generate(VGG16_V1, ["all"], out_v1, val_source="/nonexistent/val_lmdb")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out_v1) for p in out_v1.rglob("*") if p.is_file())
    for rel in files:
        if rel.name in ("README.md", "plan.json"):  # they name the source file
            a = (out / rel).read_text().replace(VGG16, "SRC")
            b = (out_v1 / rel).read_text().replace(VGG16_V1, "SRC")
        else:
            a, b = (out / rel).read_text(), (out_v1 / rel).read_text()
        assert a == b, rel


def test_alexnet_full_size_geometry(tmp_path, caffe):
    """227: conv1 55 -> pool 27 -> 13 -> 6; the decoders unpool back exactly
    (construction only) and conv1 is inverted by pre/body/post."""
    for net_path in (ALEXNET, ALEXNET_LRN):
        out = tmp_path / os.path.basename(net_path)
        generate(net_path, ["swwae-all", "sae-all"], out)
        layers = layers_by_name(out / "swwae-all" / "deploy.prototxt")
        pre, body, post = layers["dec:conv1-pre"], layers["dec:conv1-body"], layers["dec:conv1-post"]
        assert (pre.type, pre.convolution_param.kernel_size[0], pre.convolution_param.pad[0],
                pre.convolution_param.num_output) == ("Convolution", 5, 2, 96)
        assert (body.type, body.convolution_param.kernel_size[0], body.convolution_param.stride[0],
                body.convolution_param.num_output) == ("Deconvolution", 11, 4, 48)
        assert (post.type, post.convolution_param.kernel_size[0], post.convolution_param.pad[0],
                post.convolution_param.num_output, post.top[0]) == ("Deconvolution", 5, 2, 3, "dec:data")
        assert not any(l.convolution_param.group > 1 for l in layers.values() if l.name.startswith("dec:"))
        for v in ("swwae-all", "sae-all"):
            net = caffe.Net(as_input_net(out / v / "deploy.prototxt", 3), caffe.TEST)
            want = {"dec:conv5/unpool": (256, 13, 13), "dec:conv2": (256, 13, 13),
                    "dec:conv2/unpool": (256, 27, 27), "dec:conv1": (96, 27, 27),
                    "dec:conv1/unpool": (96, 55, 55), "dec:conv1-body": (48, 227, 227),
                    "dec:data": (3, 227, 227)}
            for blob, shape in want.items():
                assert net.blobs[blob].data.shape[1:] == shape, (net_path, v, blob)
        # Section 4.2: AlexNet is inverted from every layer, known switches
        recon = sorted(p.name for p in (out / "recon" / "swwae-first").iterdir())
        assert recon == [f"layer{k}" for k in range(1, 9)] and not (out / "recon" / "sae-first").exists()
        l3 = layers_by_name(out / "recon" / "swwae-first" / "layer3" / "train_val.prototxt")
        assert l3["dec:conv3"].bottom[0] == "conv3" and "conv4" not in l3
        net = caffe.Net(as_input_net(out / "recon" / "swwae-first" / "layer8" / "deploy.prototxt", 3), caffe.TEST)
        assert net.blobs["dec:conv5"].data.shape[1:] == (256, 6, 6)
        assert net.blobs["dec:data"].data.shape[1:] == (3, 227, 227)
