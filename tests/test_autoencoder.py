"""`recon-dec generate --method autoencoder`: tied weights are one blob
updated by both uses, the stacked plan freezes and initialises exactly what
it says, denoising and sparsity are wired as the lecture defines them,
conv encoders mirror, and bad requests are one-line errors."""
import json
import os
import pathlib

import numpy as np
import pytest

from generate_helpers import SMALL, as_input_net, read_net
from recon_dec import cli
from recon_dec.data import mnist
from recon_dec.data import store as data
from recon_dec.caffe_io import protos
from recon_dec.runners import plan as plans
from recon_dec.runners import train

REPO = pathlib.Path(__file__).resolve().parent.parent
MNIST_AE = str(REPO / "models" / "mnist_autoencoder" / "deploy.prototxt")
TINY_MLP = """name: "tiny-mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "h1" type: "InnerProduct" bottom: "data" top: "h1" inner_product_param { num_output: 12 } }
layer { name: "s1" type: "Sigmoid" bottom: "h1" top: "h1" }
layer { name: "h2" type: "InnerProduct" bottom: "h1" top: "h2" inner_product_param { num_output: 6 } }
layer { name: "s2" type: "Sigmoid" bottom: "h2" top: "h2" }
layer { name: "out" type: "InnerProduct" bottom: "h2" top: "out" inner_product_param { num_output: 10 } }
"""


def _generate(tmp_path, net, *args, out="out"):
    rc = cli.main(["generate", "--method", "autoencoder", "--net", str(net), "--out", str(tmp_path / out),
                   "--solver-mode", "CPU", *args])
    return rc, tmp_path / out


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    p = tmp_path_factory.mktemp("net") / "mlp.prototxt"
    p.write_text(TINY_MLP)
    return p


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """8x8 MNIST digits (downscaled), 200 train / 100 val, as LMDBs."""
    import cv2
    images, labels = mnist.load_mnist_5k()
    small = np.stack([cv2.resize(im, (8, 8), interpolation=cv2.INTER_AREA) for im in images[:300]])
    d = tmp_path_factory.mktemp("digits")
    data.build_lmdb([(small[i], int(labels[i])) for i in range(200)], d / "train", progress=False)
    data.build_lmdb([(small[i], int(labels[i])) for i in range(200, 300)], d / "val", progress=False)
    return str(d / "train"), str(d / "val")


def _randomise(net, rng, scale=0.3):
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * scale


def test_tied_weights_are_one_blob_with_both_gradients(tmp_path, tiny_net, caffe):
    rc, out = _generate(tmp_path, tiny_net, "--variant", "ae")
    assert rc == 0
    rc, out_u = _generate(tmp_path, tiny_net, "--variant", "ae", "--untied", out="untied")
    assert rc == 0
    proto = {l.name: l for l in read_net(out / "ae" / "pretrain" / "train_val.prototxt").layer}
    assert proto["dec:h1"].inner_product_param.transpose and proto["dec:h1"].param[0].name == "h1#0"
    assert proto["h1"].param[0].name == "h1#0" and not proto["dec:h1"].param[1].name  # biases separate
    tied = caffe.Net(as_input_net(out / "ae" / "pretrain" / "train_val.prototxt", 1, batch=4, size=8), caffe.TRAIN)
    untied = caffe.Net(as_input_net(out_u / "ae" / "pretrain" / "train_val.prototxt", 1, batch=4, size=8), caffe.TRAIN)
    rng = np.random.default_rng(0)
    _randomise(tied, rng)
    # one blob: writing the encoder's weight changes the decoder's
    tied.params["h1"][0].data[0, 0] = 0.5
    assert tied.params["dec:h1"][0].data[0, 0] == 0.5
    # the same function untied: decoder weights = the transposes, biases equal
    for name in tied.params:
        if name.startswith("dec:"):
            untied.params[name][0].data[...] = tied.params[name[4:]][0].data.T
            untied.params[name][1].data[...] = tied.params[name][1].data
        else:
            for a, b in zip(tied.params[name], untied.params[name]):
                b.data[...] = a.data
    x = rng.uniform(0, 1, tied.blobs["data"].data.shape)
    for net in (tied, untied):
        net.blobs["data"].data[...] = x
        net.forward()
        net.backward()
    np.testing.assert_allclose(tied.blobs["dec:loss@data"].data, untied.blobs["dec:loss@data"].data, rtol=1e-5)
    for name in ("h1", "h2"):  # the tied gradient is the sum of the encoder's and the decoder's
        want = untied.params[name][0].diff + untied.params["dec:" + name][0].diff.T
        np.testing.assert_allclose(tied.params[name][0].diff, want, rtol=1e-4, atol=1e-7)
        assert np.abs(untied.params["dec:" + name][0].diff).max() > 1e-4  # both uses contribute


def test_stacked_plan_freezes_and_initialises_what_it_names(tmp_path, digits, caffe):
    rc, out = _generate(tmp_path, MNIST_AE, "--variant", "stacked", "--untied", "--noise", "masking", "--train-source", digits[0],
                        "--val-source", digits[1], "--input-size", "8", "--max-iter", "8",
                        "--random-seed", "5", "--test-iter", "1")
    assert rc == 0
    plan = json.loads((out / "stacked" / "plan.json").read_text())
    assert [s["id"] for s in plan["stages"]] == ["layer1", "layer2", "layer3", "layer4", "unroll", "finetune"]
    layer2 = {l.name: l for l in read_net(out / "stacked" / "layer2" / "train_val.prototxt").layer}
    assert [p.lr_mult for p in layer2["encode1"].param] == [0, 0] and layer2["encode2"].param[0].lr_mult == 1
    assert layer2["encode1/noise"].type == "MaskingNoise"   # noise on what layer 2 reads ...
    assert layer2["encode2"].bottom[0] == "encode1/noise"
    assert list(layer2["dec:loss@encode1"].bottom) == ["dec:encode1", "encode1"]  # ... the clean target
    assert layer2["dec:loss@encode1"].type == "SigmoidCrossEntropyLoss"
    assert "dec:encode1" not in {l.name for l in read_net(out / "stacked" / "layer2" / "train_val.prototxt").layer
                                 if l.type == "InnerProduct"}

    plan_path = str(out / "stacked" / "plan.json")
    outs = [train.run_stage(plan_path, f"layer{k}", progress=False) for k in range(1, 5)]
    deploy = str(out / "stacked" / "deploy.prototxt")
    nets = {f"layer{k}": caffe.Net(deploy, o, caffe.TEST) for k, o in zip(range(1, 5), outs)}
    same = np.testing.assert_array_equal
    same(nets["layer2"].params["encode1"][0].data, nets["layer1"].params["encode1"][0].data)  # frozen
    same(nets["layer4"].params["encode3"][0].data, nets["layer3"].params["encode3"][0].data)
    same(nets["layer3"].params["encode2"][0].data, nets["layer2"].params["encode2"][0].data)
    # unroll's init: the encoder from layer4, each decoder from its own greedy stage, nothing else
    p = plans.load(plan_path)
    st = plans.stage(p, "unroll")
    init, origin = plans.init_weights(p, st, read_net(out / "stacked" / "unroll" / "train_val.prototxt"))
    held = {l.name: l for l in protos.read_caffemodel(init).layer}
    assert set(held) == {f"encode{k}" for k in range(1, 5)} | {f"dec:encode{k}" for k in range(1, 5)}
    for k in range(1, 5):
        same(np.array(held[f"dec:encode{k}"].blobs[0].data).reshape(nets[f"layer{k}"].params[f"dec:encode{k}"][0].data.shape),
             nets[f"layer{k}"].params[f"dec:encode{k}"][0].data)
        same(np.array(held[f"encode{k}"].blobs[0].data).reshape(nets["layer4"].params[f"encode{k}"][0].data.shape),
             nets["layer4"].params[f"encode{k}"][0].data)
    os.unlink(init)
    train.run_all(plan_path, progress=False)
    # finetune starts from the unrolled encoder only (the file also holds the
    # decoder): a per-stage init caffemodel with exactly those layers
    log = open(out / "stacked" / "logs" / "finetune.log").read()
    assert "-weights " + str(out / "stacked" / "init" / "finetune.caffemodel") in log


def test_denoising_resume_continues_exactly(tmp_path, tiny_net, caffe):
    """A denoising autoencoder (masking noise on the input) trained N
    iterations straight vs N/2, stopped (its snapshot) and resumed by
    `recon-dec train`: the same weights, noise stream (MaskingNoise's key and
    counter), solver history and losses, bit for bit. The data: 8 rows read
    by batches of 4, so both runs read the same rows at every iteration
    (Caffe's Data layer starts again at the first row after a resume)."""
    import re
    import subprocess
    from recon_dec.caffe_io.tool import caffe_binary
    from test_ladder import _blobs, _losses
    iters, half = 8, 4
    rng = np.random.default_rng(0)
    data.write_raw_lmdb(rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), rng.integers(0, 10, 8),
                        tmp_path / "rows", "rows")
    runs = {}
    for run in ("straight", "resumed"):
        rc, out = _generate(tmp_path, tiny_net, "--variant", "ae", "--noise", "masking", "--noise-level", "0.3",
                            "--train-source", str(tmp_path / "rows"), "--input-size", "8", "--batch", "4",
                            "--max-iter", str(iters), "--snapshot", str(half), "--random-seed", "5", out=run)
        assert rc == 0
        runs[run] = out / "ae"
        solver = runs[run] / "pretrain" / "solver.prototxt"
        solver.write_text(re.sub(r"average_loss: \d+", "average_loss: 1",
                                 re.sub(r"display: \d+", "display: 1", solver.read_text())))
    noise = {l.name: l for l in read_net(runs["straight"] / "pretrain" / "train_val.prototxt").layer}["data/noise"]
    assert noise.type == "MaskingNoise" and [(p.lr_mult, p.decay_mult) for p in noise.param] == [(0, 0)]
    plan = str(runs["straight"] / "plan.json")
    assert cli.main(["train", plan, "--stage", "pretrain", "--no-progress"]) == 0
    r = runs["resumed"]
    text = (r / "pretrain" / "solver.prototxt").read_text()
    (r / "pretrain" / "half.prototxt").write_text(text.replace(f"max_iter: {iters}", f"max_iter: {half}"))
    (r / "snapshots").mkdir()
    subprocess.run([caffe_binary(), "train", "-solver", "pretrain/half.prototxt"], cwd=r, check=True,
                   capture_output=True)
    assert cli.main(["train", str(r / "plan.json"), "--stage", "pretrain", "--no-progress"]) == 0
    log = (r / "logs" / "pretrain.log").read_text()
    assert f"resuming from {r}/snapshots/pretrain_iter_{half}.solverstate" in log
    straight, resumed = _losses((runs["straight"] / "logs" / "pretrain.log").read_text()), _losses(log)
    assert sorted(resumed) == list(range(half, iters)) and sorted(straight) == list(range(iters))
    for ext in ("caffemodel", "solverstate"):
        a = _blobs(runs["straight"] / "snapshots" / f"pretrain_iter_{iters}.{ext}")
        b = _blobs(r / "snapshots" / f"pretrain_iter_{iters}.{ext}")
        assert sorted(a) == sorted(b)
        for name in a:
            assert len(a[name]) == len(b[name]) and all(np.array_equal(x, y) for x, y in zip(a[name], b[name])), name
    model = _blobs(runs["straight"] / "snapshots" / f"pretrain_iter_{iters}.caffemodel")
    assert list(model["data/noise"][0][4:]) == [iters, 0, 0, 0]   # the stream's counter: N TRAIN passes
    assert {i: straight[i] for i in range(half, iters)} == resumed


def test_sparse_denoising_and_conv_encoders(tmp_path, tiny_net, caffe):
    rc, out = _generate(tmp_path, tiny_net, "--variant", "ae", "--code-layer", "h2", "--sparsity", "0.1",
                        "--sparsity-weight", "0.5", "--noise", "gaussian", "--noise-level", "0.2", "--code-width", "9")
    assert rc == 0
    layers = {l.name: l for l in read_net(out / "ae" / "pretrain" / "train_val.prototxt").layer}
    kl = layers["dec:loss@sparsity"]
    assert kl.type == "KLSparsityLoss" and list(kl.bottom) == ["h2"] and kl.loss_weight[0] == 0.5
    assert kl.kl_sparsity_param.rho == pytest.approx(0.1)
    assert layers["data/noise"].type == "GaussianNoise" and layers["h1"].bottom[0] == "data/noise"
    assert layers["data/noise"].gaussian_noise_param.std == pytest.approx(0.2)
    assert layers["h2"].inner_product_param.num_output == 9  # the code width
    assert list(layers["dec:loss@data"].bottom) == ["dec:data", "data"]
    # a conv encoder with ReLUs and max pools (the demo's small VGG): the
    # decoder unpools with known switches and reconstructs the input's shape
    rc, out = _generate(tmp_path, SMALL, "--variant", "ae", "--loss", "mse", out="conv")
    assert rc == 0
    net = caffe.Net(as_input_net(out / "ae" / "pretrain" / "train_val.prototxt", 1, batch=2, size=32), caffe.TRAIN)
    _randomise(net, np.random.default_rng(1), 0.05)
    net.blobs["data"].data[...] = np.random.default_rng(2).uniform(0, 1, net.blobs["data"].data.shape)
    net.forward()
    net.backward()
    assert net.blobs["dec:data"].data.shape == net.blobs["data"].data.shape == (2, 1, 32, 32)
    assert np.isfinite(float(net.blobs["dec:loss@data"].data))
    kinds = {l.type for l in read_net(out / "ae" / "pretrain" / "train_val.prototxt").layer}
    assert {"Unpooling", "Deconvolution", "EuclideanLoss"} <= kinds


@pytest.mark.parametrize("args,message", [
    (["--variant", "ae", "--sparsity", "0.05", "--code-layer", "out"], "needs a sigmoid code layer"),
    (["--variant", "ae", "--code-layer", "nope"], "layer 'nope': --code-layer"),
    (["--variant", "context", "--patch-size", "9"], "--patch-size 9 is larger than the 8x8 input"),
    (["--variant", "ae", "--noise", "masking", "--noise-level", "1.5"], "--noise-level: masking probability"),
    (["--variant", "ae", "--step2-lr", "1=1e-3"], "--step2-lr is an option of --method swwae"),
])
def test_bad_requests_are_one_line_errors(tmp_path, tiny_net, capsys, args, message):
    rc, out = _generate(tmp_path, tiny_net, *args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_grouped_conv_cannot_be_tied(tmp_path, capsys):
    net = tmp_path / "g.prototxt"
    net.write_text(TINY_MLP.replace('dim: 8 dim: 8 } } }', 'dim: 8 dim: 8 } } }\nlayer { name: "c" type: "Convolution" '
                                    'bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 group: 1 } }')
                   .replace('name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param '
                            '{ num_output: 4 kernel_size: 3 group: 1 }', 'name: "c" type: "Convolution" bottom: '
                            '"data" top: "c" convolution_param { num_output: 4 kernel_size: 3 group: 2 }')
                   .replace('dim: 1 dim: 8', 'dim: 2 dim: 8').replace('bottom: "data" top: "h1"', 'bottom: "c" top: "h1"'))
    rc, out = _generate(tmp_path, net, "--variant", "ae")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{net}: layer 'c': cannot mirror a dilated or grouped convolution" in err
    assert not os.path.exists(out)


def test_context_encoder_reconstructs_only_the_patch(tmp_path, tiny_net, caffe):
    rc, out = _generate(tmp_path, tiny_net, "--variant", "context", "--patch-size", "4", "--patch-mode", "CENTER",
                        "--loss", "mse")
    assert rc == 0
    path = as_input_net(out / "context" / "pretrain" / "train_val.prototxt", 1, batch=3, size=8)
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(3)
    _randomise(net, rng)
    x = rng.uniform(0, 1, net.blobs["data"].data.shape)
    net.blobs["data"].data[...] = x
    net.forward()
    mask = np.zeros((3, 1, 8, 8))
    mask[:, :, 2:6, 2:6] = 1
    np.testing.assert_array_equal(net.blobs["data/patch-mask"].data, mask)
    np.testing.assert_allclose(net.blobs["data/patch-removed"].data, x * (1 - mask), rtol=1e-6)  # the input
    want = ((net.blobs["dec:data"].data - x) ** 2 * mask).sum() / 2 / 3   # Euclidean on the patch, per image
    assert float(net.blobs["dec:loss@data"].data) == pytest.approx(want, rel=1e-5)
