"""The ladder's Gamma-model on convolutional encoders (--method ladder
--variant gamma|supervised): the TRAIN forward pass of a tiny conv net (conv
"full" + ReLU, max pool, conv "valid" + leaky ReLU, global average pool, fc;
4 labeled + 4 unlabeled rows) equals a numpy re-implementation of the
official code's Gamma-model (batch normalisation per channel after every
level, pools included, the same weights and the noise read from the net),
its top cost and cross-entropy to 1e-5; the passes share the conv weights;
TEST is the clean pass on the running statistics; the shipped Conv-Small
builds and learns in 20 iterations of `caffe train` on MNIST-5k; bad conv
encoders and the full ladder on a conv net without --lambdas get one line and nothing
written. The same tiny net with the global pool as its top (Conv-Large's
form: the softmax on the pooled maps) is checked as well. The full ladder
on the same nets (and on a 7x7 input, whose rounded-up pooling makes the
decoder crop): every level's cost equals a numpy version of the official
code's decoder (V, deconvolution, depooling, per-channel combinators) to
1e-5; it trains; encoders whose decoder cannot mirror them are named."""
import pathlib
import re

import numpy as np
import pytest

from recon_dec import cli
from recon_dec.caffe_io import protos

REPO = pathlib.Path(__file__).resolve().parent.parent
CONV_SMALL = REPO / "models" / "ladder" / "conv_small.prototxt"
N = 4                       # rows of each stream
TEST_ROWS = 5
LAMBDA = 1.7
INPUT_NOISE, LAYER_NOISE = 0.2, 0.3
SLOPE = 0.1                 # conv2's leaky ReLU

TINY = """name: "tiny_conv"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param { negative_slope: 0.1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
# the same net with the global pool as its top (4 classes)
POOL_TOP = TINY.replace('layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" '
                        'inner_product_param { num_output: 3 } }\n', '').replace('bottom: "fc"', 'bottom: "pool2"')
NETS = {"fc": (TINY, ["conv1", "pool1", "conv2", "pool2", "fc"], 3),
        "pooltop": (POOL_TOP, ["conv1", "pool1", "conv2", "pool2"], 4)}   # text, levels, classes
SHAPES = {"conv1": (3, 8, 8), "pool1": (3, 4, 4), "conv2": (4, 2, 2), "pool2": (4, 1, 1), "fc": (3,)}


def _generate(out, net, *extra):
    return cli.main(["generate", "--method", "ladder", "--net", str(net), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """{net: output directory} of both tiny nets, variants gamma and supervised."""
    d = tmp_path_factory.mktemp("ladder_conv")
    out = {}
    for key, (text, _, _) in NETS.items():
        (d / f"{key}.prototxt").write_text(text)
        assert _generate(d / key, d / f"{key}.prototxt", "--variant", "gamma", "--variant", "supervised",
                         "--labeled-source", "/x/labeled", "--train-source", "/x/unlabeled", "--val-source",
                         "/x/test", "--batch", str(N), "--test-batch", str(TEST_ROWS), "--solver-mode", "CPU",
                         "--lambdas", str(LAMBDA), "--input-noise-std", str(INPUT_NOISE),
                         "--noise-std", str(LAYER_NOISE)) == 0
        out[key] = d / key
    return out


@pytest.fixture(scope="module")
def tiny(generated):
    return generated["fc"]


def _with_inputs(src, dst, side=6, channels=2):
    """The train_val net with its data layers as Input layers."""
    net = protos.read_net(str(src))
    for l in net.layer:
        if l.type == "Data":
            rows = N if l.include[0].phase == 0 else TEST_ROWS
            tops, include = list(l.top), list(l.include)
            l.Clear()
            l.name, l.type = tops[0], "Input"
            l.top.extend(tops)
            l.include.extend(include)
            l.input_param.shape.add().dim.extend([rows, channels, side, side])
            l.input_param.shape.add().dim.extend([rows])
    pathlib.Path(dst).write_text(str(net))
    return str(dst)


def _randomise(net, rng):
    """Every learned blob random; running statistics and noise streams left alone."""
    for name, blobs in net.params.items():
        t = net.layer_dict[name].type
        if name.startswith("noisy/") or t in ("BatchStats", "GaussianNoise"):
            continue
        for i, b in enumerate(blobs):
            if t in ("Convolution", "InnerProduct"):
                b.data[...] = rng.standard_normal(b.data.shape) * 1.5 / np.sqrt(np.prod(b.data.shape[1:]))
            elif t == "Scale":
                b.data[...] = 1 + 0.3 * rng.standard_normal(b.data.shape)
            elif t == "LadderCombinator":
                b.data[...] = 0.5 * rng.standard_normal(b.data.shape) + (1.0 if i in (1, 6) else 0.0)
            else:
                b.data[...] = 0.5 * rng.standard_normal(b.data.shape)


# --------------------------------------------------------------------------
# numpy: the official code's f() for conv, pool and fc levels
def _conv(x, w, pad):
    """Caffe's convolution (cross-correlation), stride 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + ho, j:j + wo], w[:, :, i, j])
    return out


def _bn(x):
    """Batch normalisation per unit (N x D) or per channel (N x C x H x W)."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    m, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-10), m, v


def _per_channel(p, x):
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _P(net, name):
    return [b.data.astype(np.float64) for b in net.params[name]]


def _pre(net, name, h):
    """The level's operation on ``h``."""
    if name == "conv1":
        return _conv(h, _P(net, name)[0], 2)
    if name == "conv2":
        return _conv(h, _P(net, name)[0], 0)
    if name == "pool1":   # Caffe rounds up: an odd last window is clipped
        h = np.pad(h, ((0, 0), (0, 0), (0, h.shape[2] % 2), (0, h.shape[3] % 2)), constant_values=-np.inf)
        n, c, hh, ww = h.shape
        return h.reshape(n, c, hh // 2, 2, ww // 2, 2).max((3, 5))
    if name == "pool2":
        return h.mean((2, 3), keepdims=True)
    return h.reshape(len(h), -1) @ _P(net, name)[0].T


def _after(net, name, z, top):
    """h of the level from its (corrupted) z: ReLU, leaky ReLU, linear pools,
    the top's logits gamma (z + beta)."""
    if name.startswith("pool") and not top:
        return z
    pre = z + _per_channel(_P(net, f"{name}/beta")[0], z)
    if top:
        return _per_channel(_P(net, f"{name}/gamma")[0], pre) * pre
    if name == "conv1":
        return np.maximum(pre, 0)
    return np.where(pre > 0, pre, SLOPE * pre)     # conv2


def _encoder(net, levels, x, noisy, streams, stats=None):
    """One pass per stream; the corrupted pass adds the noise the net drew.
    ``stats``: normalise with these (mean, var) per level instead of the
    batch's (TEST). Returns z, batch means and variances per level and
    stream, and the logits per stream."""
    z, mean, var, h = {}, {}, {}, list(x)
    for name in levels:
        z[name], mean[name], var[name] = [], [], []
        for k, s in enumerate(streams):
            pre = _pre(net, name, h[k])
            if stats is None:
                zz, m, v = _bn(pre)
            else:
                m, v = (_per_channel(a, pre) for a in stats[name])
                zz = (pre - m) / np.sqrt(v + 1e-10)
            if noisy:
                at = "" if s == "" else f"@{s}"
                zz = zz + (net.blobs[f"noisy/{name}/z{at}"].data - net.blobs[f"noisy/{name}/bn{at}"].data)
            z[name].append(zz)
            mean[name].append(m)
            var[name].append(v)
            h[k] = _after(net, name, zz, name == levels[-1])
    return z, mean, var, [x.reshape(len(x), -1) for x in h]


def gamma_model(net, variant, levels):
    """Cross-entropy on the corrupted labeled rows and (gamma) the top
    denoising cost: lambda mean_n ||z - zhat_BN||^2 / width over the
    unlabeled rows, u = BN(softmax of the corrupted top), the gauss
    combinator, zhat normalised with the clean unlabeled statistics."""
    streams = ("",) if variant == "supervised" else ("labeled", "unlabeled")
    data = lambda s, suffix="": net.blobs[("data" if s == "" else f"data/{s}") + suffix].data.astype(np.float64)
    z, mean, var, _ = _encoder(net, levels, [data(s) for s in streams], False, streams)
    zt, _, _, logits = _encoder(net, levels, [data(s, "/noisy") for s in streams], True, streams)
    label = net.blobs["label"].data.astype(int)
    costs = {"loss": -np.mean(np.log(_softmax(logits[0])[np.arange(N), label]))}
    if variant == "gamma":
        top = levels[-1]
        flat = lambda x: x.reshape(N, -1)
        u = _bn(_softmax(logits[1]))[0]
        a = [b.data.astype(np.float64).ravel() for b in net.params[f"dec:{top}/g"]]
        mu = a[0] * _sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
        v = a[5] * _sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
        zhat = (flat(zt[top][1]) - mu) * v + mu
        zhat_bn = (zhat - mean[top][1].reshape(1, -1)) / np.sqrt(var[top][1].reshape(1, -1) + 1e-10)
        costs[f"dec:loss@{top}"] = LAMBDA * np.mean(((zhat_bn - flat(z[top][1])) ** 2).sum(1)) / u.shape[1]
    return costs, logits[0], {n: (mean[n][0].ravel(), var[n][0].ravel()) for n in levels}


def _caffe_costs(net, path):
    weights = {l.name: (l.loss_weight[0] if l.loss_weight else 1.0) for l in protos.read_net(path).layer
               if l.type in ("SoftmaxWithLoss", "EuclideanLoss") and not any(r.phase == 1 for r in l.include)}
    return {n: float(net.blobs[n].data) * w for n, w in weights.items()}


@pytest.mark.parametrize("key", sorted(NETS))
@pytest.mark.parametrize("variant", ["gamma", "supervised"])
def test_forward_is_the_gamma_model(variant, key, generated, tmp_path, caffe):
    _, levels, classes = NETS[key]
    top = levels[-1]
    path = _with_inputs(generated[key] / variant / "train_val.prototxt", tmp_path / "net.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(11)
    _randomise(net, rng)
    streams = ("",) if variant == "supervised" else ("labeled", "unlabeled")
    for s in streams:
        data = "data" if s == "" else f"data/{s}"
        net.blobs[data].data[...] = rng.uniform(0, 1, net.blobs[data].data.shape)
        lab = "label" if s in ("", "labeled") else f"label/{s}"
        net.blobs[lab].data[...] = rng.integers(0, classes, net.blobs[lab].data.shape)
    net.forward()
    for name in levels:      # every level normalised, and corrupted, at its own shape
        assert net.blobs[f"{name}/z"].data.shape == (2 * N if variant == "gamma" else N,) + SHAPES[name]
    want, logits, stats = gamma_model(net, variant, levels)
    got = _caffe_costs(net, path)
    assert sorted(got) == sorted(want) == ([f"dec:loss@{top}", "loss"] if variant == "gamma" else ["loss"])
    for k in want:
        assert want[k] > 1e-3, k
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    at = "" if variant == "supervised" else "@labeled"
    np.testing.assert_allclose(net.blobs[f"noisy/{top}/logits{at}"].data.reshape(N, -1), logits, rtol=1e-5,
                               atol=1e-5)
    # the noise is there after every level, pools included, of the asked size
    std = 0.3 if variant == "gamma" else LAYER_NOISE
    for name in levels:
        noise = net.blobs[f"noisy/{name}/z{at}"].data - net.blobs[f"noisy/{name}/bn{at}"].data
        assert 0.3 < noise.std() / std < 3, name
    # running statistics: the clean labeled half's per channel, variance unbiased over N x H x W values
    for name in levels:
        s = net.params[f"{name}/stats@labeled"]
        m = N * int(np.prod(SHAPES[name][1:]))
        np.testing.assert_allclose(s[0].data / s[2].data, stats[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s[1].data / s[2].data, stats[name][1] * m / (m - 1), rtol=1e-5, atol=1e-6)
    # TEST: the clean pass on those statistics, sharing the train net's blobs
    test = caffe.Net(path, caffe.TEST)
    test.share_with(net)
    x = rng.uniform(0, 1, test.blobs["data"].data.shape)
    test.blobs["data"].data[...] = x
    test.blobs["label"].data[...] = rng.integers(0, classes, TEST_ROWS)
    test.forward()
    running = {n: (net.params[f"{n}/stats@labeled"][0].data / net.params[f"{n}/stats@labeled"][2].data,
                   net.params[f"{n}/stats@labeled"][1].data / net.params[f"{n}/stats@labeled"][2].data)
               for n in levels}
    want_logits = _encoder(net, levels, [x], False, ("",), running)[3][0]
    np.testing.assert_allclose(test.blobs[f"{top}/logits"].data.reshape(TEST_ROWS, -1), want_logits, rtol=1e-5,
                               atol=1e-5)
    assert float(test.blobs["accuracy/top-1"].data) == pytest.approx(np.mean(want_logits.argmax(1) ==
                                                                            test.blobs["label"].data))
    assert "noisy/conv1" not in test.layer_dict


def test_passes_share_the_conv_weights(tiny, tmp_path, caffe):
    path = _with_inputs(tiny / "gamma" / "train_val.prototxt", tmp_path / "net.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    shared = sorted(n for n in net.params
                    if n.startswith("noisy/") and net.layer_dict[n].type not in ("BatchStats", "GaussianNoise"))
    assert shared == sorted(f"noisy/{n}" for n in ["conv1", "conv2", "fc", "conv1/beta", "conv2/beta", "fc/beta",
                                                   "fc/gamma"])
    assert [b.data.shape for b in net.params["conv1"]] == [(3, 2, 3, 3)]     # no bias: beta takes its place
    assert net.params["conv2/beta"][0].data.shape == (4,)                   # beta per channel
    net.params["conv2"][0].data[1, 2, 0, 1] = 0.375
    assert net.params["noisy/conv2"][0].data[1, 2, 0, 1] == 0.375
    net.params["noisy/conv1/beta"][0].data[2] = -1.25
    assert net.params["conv1/beta"][0].data[2] == -1.25
    assert not {"pool1/beta", "pool2/beta", "pool1/relu"} & set(net.layer_dict)   # linear pooling levels
    layers = {l.name: l for l in protos.read_net(path).layer}
    assert layers["conv1"].convolution_param.weight_filler.type == "xavier"
    assert not layers["conv1"].convolution_param.bias_term
    assert layers["noisy/conv2/relu"].relu_param.negative_slope == pytest.approx(SLOPE)
    assert layers["dec:loss@fc"].loss_weight[0] == pytest.approx(2 * LAMBDA / 3, rel=1e-5)
    assert {n for n in layers if n.startswith("dec:")} == {   # the decoder: the top level only
        "dec:fc/softmax", "dec:fc/u/stats", "dec:fc/u/bn", "dec:fc/g", "dec:fc/zhat/bn", "dec:loss@fc"}


def test_conv_small_builds(tmp_path, caffe):
    out = tmp_path / "out"
    assert _generate(out, CONV_SMALL, "--variant", "gamma", "--variant", "supervised", "--labeled-source", "/x/l",
                     "--train-source", "/x/u", "--val-source", "/x/t") == 0
    readme = (out / "README.md").read_text()
    for line in ["level 1: conv1 (convolution, ReLU): 1x28x28 -> 32x32x32",
                 "level 2: pool1 (max pooling 2x2/2, linear): 32x32x32 -> 32x16x16",
                 "level 3: conv2 (convolution, ReLU): 32x16x16 -> 64x14x14",
                 "level 4: conv3 (convolution, ReLU): 64x14x14 -> 64x16x16",
                 "level 5: pool2 (max pooling 2x2/2, linear): 64x16x16 -> 64x8x8",
                 "level 6: conv4 (convolution, ReLU): 64x8x8 -> 128x6x6",
                 "level 7: conv5 (convolution, ReLU): 128x6x6 -> 10x6x6",
                 "level 8: pool3 (global average pooling, linear): 10x6x6 -> 10x1x1",
                 "level 9: fc (inner product, softmax): 10x1x1 -> 10"]:
        assert line in readme
    gamma = {l.name: l for l in protos.read_net(str(out / "gamma" / "train_val.prototxt")).layer}
    # the official Conv-Small Gamma command: top cost 1 (weight 2 / 10), noise 0.3; baseline noise 0.45
    assert gamma["dec:loss@fc"].loss_weight[0] == pytest.approx(0.2)
    assert [n for n in gamma if n.startswith("dec:loss")] == ["dec:loss@fc"]
    assert gamma["noisy/pool3/noise@unlabeled"].gaussian_noise_param.std == pytest.approx(0.3)
    sup = {l.name: l for l in protos.read_net(str(out / "supervised" / "train_val.prototxt")).layer}
    assert sup["noisy/conv3/noise"].gaussian_noise_param.std == pytest.approx(0.45)
    for variant in ("gamma", "supervised"):
        deploy = caffe.Net(str(out / variant / "deploy.prototxt"), caffe.TEST)
        assert deploy.blobs["prob"].data.shape == (1, 10)
        assert deploy.blobs["pool3/z"].data.shape == (1, 10, 1, 1)
        assert [b.data.shape for b in deploy.params["conv4"]] == [(128, 64, 3, 3)]


def test_conv_small_full_ladder_builds(tmp_path, caffe):
    """The shipped Conv-Small as a full ladder: a decoder level under each
    of its nine levels, at the encoder's shapes (28x28 input)."""
    out = tmp_path / "out"
    assert _generate(out, CONV_SMALL, "--variant", "full", "--labeled-source", "/x/l", "--train-source", "/x/u",
                     "--lambdas", "1000,10,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1", "--batch", str(N)) == 0
    path = _with_inputs(out / "full" / "train_val.prototxt", tmp_path / "net.prototxt", 28, 1)
    net = caffe.Net(path, caffe.TRAIN)
    shapes = {"data": (1, 28, 28), "conv1": (32, 32, 32), "pool1": (32, 16, 16), "conv2": (64, 14, 14),
              "conv3": (64, 16, 16), "pool2": (64, 8, 8), "conv4": (128, 6, 6), "conv5": (10, 6, 6),
              "pool3": (10, 1, 1), "fc": (10,)}
    for name, shape in shapes.items():
        assert net.blobs[f"dec:{name}/zhat"].data.shape == (N,) + shape, name
    assert sorted(n for n in net.blobs if n.startswith("dec:loss@")) == sorted(f"dec:loss@{n}" for n in shapes)


def test_conv_small_learns_on_mnist5k(tmp_path):
    split = tmp_path / "split"
    assert cli.main(["data", "semi", "--dataset", "mnist5k", "--labels", "100", "--out", str(split),
                     "--no-progress"]) == 0
    out = tmp_path / "out"
    assert _generate(out, CONV_SMALL, "--variant", "gamma", "--labeled-source", str(split / "labeled_lmdb"),
                     "--train-source", str(split / "unlabeled_lmdb"), "--val-source", str(split / "test_lmdb"),
                     "--batch", "10", "--test-batch", "50", "--test-iter", "2", "--test-interval", "20",
                     "--max-iter", "20", "--random-seed", "1", "--solver-mode", "CPU") == 0
    solver = out / "gamma" / "train" / "solver.prototxt"   # every iteration's losses in the log
    solver.write_text(re.sub(r"average_loss: \d+", "average_loss: 1", re.sub(r"display: \d+", "display: 1",
                                                                                solver.read_text())))
    assert cli.main(["train", str(out / "gamma" / "plan.json"), "--stage", "train", "--no-progress"]) == 0
    log = (out / "gamma" / "logs" / "train.log").read_text()
    heads = {}
    for name, value in re.findall(r"Train net output #\d+: (\S+) = (\S+)", log):
        heads.setdefault(name, []).append(float(value))
    assert sorted(heads) == ["dec:loss@fc", "loss"] and all(len(v) == 20 for v in heads.values())
    for name, values in heads.items():   # both fall (the cross-entropy fast, the top cost slowly)
        assert np.all(np.isfinite(values)), name
        assert np.mean(values[-5:]) < (0.9 if name == "loss" else 0.97) * np.mean(values[:5]), (name, values)
    test = dict(re.findall(r"Test net output #\d+: (\S+) = (\S+)", log))
    assert float(test["accuracy/top-1"]) > 0.2 and np.isfinite(float(test["loss/test"]))


# --------------------------------------------------------------------------
def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err) and len(err.splitlines()) == 1, err
    return err


def _refused(changes, message, tmp_path, capsys, *args):
    """TINY with ``changes`` applied: generate refuses it in one line naming
    the file and ``message``, and writes nothing."""
    net = TINY
    for old, new in changes:
        assert old in net
        net = net.replace(old, new)
    bad = tmp_path / "bad.prototxt"
    bad.write_text(net)
    assert _generate(tmp_path / "out", bad, "--labeled-source", "/x/l", "--train-source", "/x/u", *args) == 2
    err = _one_line(capsys)
    assert str(bad) in err and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [
    ((), "--lambdas: --variant full on the convolutional encoder"),
    ((('layer { name: "fc"', 'layer { name: "side" type: "Convolution" bottom: "pool1" top: "side" '
      'convolution_param { num_output: 2 kernel_size: 1 } }\nlayer { name: "fc"'),),
     "layer 'side': reads blob 'pool1' but the previous layer wrote 'pool2' (branching nets"),
    ((('layer { name: "pool2"', 'layer { name: "drop" type: "Dropout" bottom: "conv2" top: "conv2" }\n'
      'layer { name: "pool2"'),), "layer 'drop': unsupported layer type 'Dropout'"),
    ((('layer { name: "relu1" type: "ReLU"', 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
      'layer { name: "relu1" type: "ReLU"'),), "layer 'bn1': a BatchNorm layer: the ladder inserts its own"),
    ((("pool: MAX kernel_size: 2 stride: 2 } }",
      'pool: MAX kernel_size: 2 stride: 2 } }\nlayer { name: "relup" type: "ReLU" bottom: "pool1" top: "pool1" }'),),
     "layer 'relup': a ReLU after the pooling layer 'pool1'"),
    ((("pool: MAX kernel_size: 2", "pool: STOCHASTIC kernel_size: 2"),),
     "layer 'pool1': only MAX and AVE pooling are supported"),
    ((("pool: AVE global_pooling: true", "pool: AVE global_pooling: true kernel_size: 2"),),
     "layer 'pool2': global_pooling together with a kernel size"),
    ((('pool: AVE global_pooling: true', 'pool: AVE kernel_size: 1'),
      ('layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 3 } }\n',
       ''), ('bottom: "fc" top: "prob"', 'bottom: "pool2" top: "prob"')),
     "layer 'pool2': the output layer gives 4x2x2; the softmax needs one value per class"),
])
def test_bad_conv_encoders_are_named(changes, message, tmp_path, capsys):
    _refused(changes, message, tmp_path, capsys, "--variant", "gamma" if changes else "full")


# --------------------------------------------------------------------------
# the full ladder on a conv encoder: a decoder level under every level
FULL_LAMBDAS = {"fc": (0.6, 1.1, 0.9, 1.3, 0.7, 1.9), "pooltop": (0.6, 1.1, 0.9, 1.3, 1.9),
                "odd": (0.6, 1.1, 0.9, 1.3, 0.7, 1.9)}
# a 7x7 input: conv1 9x9, pool1 rounds up to 5x5, so the depooled 10x10 is cropped to 9x9
FULL_NETS = dict(NETS, odd=(TINY.replace("dim: 6 dim: 6", "dim: 7 dim: 7"), NETS["fc"][1], 3))
SIDES = {"fc": 6, "pooltop": 6, "odd": 7}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """{net: output directory} of both tiny nets, variant full."""
    d = tmp_path_factory.mktemp("ladder_conv_full")
    out = {}
    for key, (text, _, _) in FULL_NETS.items():
        (d / f"{key}.prototxt").write_text(text)
        assert _generate(d / key, d / f"{key}.prototxt", "--variant", "full", "--labeled-source", "/x/labeled",
                         "--train-source", "/x/unlabeled", "--val-source", "/x/test", "--batch", str(N),
                         "--test-batch", str(TEST_ROWS), "--solver-mode", "CPU", "--lambdas",
                         ",".join(map(str, FULL_LAMBDAS[key])), "--input-noise-std", str(INPUT_NOISE),
                         "--noise-std", str(LAYER_NOISE)) == 0
        out[key] = d / key
    return out


def _deconv(x, w, pad):
    """Caffe's Deconvolution, stride 1: each input value spreads its kernel
    (weights C_in x C_out x k x k), the pad cut off the border."""
    kh, kw = w.shape[2:]
    n, _, h, wd = x.shape
    out = np.zeros((n, w.shape[1], h + kh - 1, wd + kw - 1))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + h, j:j + wd] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
    return out[:, :, pad:out.shape[2] - pad, pad:out.shape[3] - pad]


def _gauss(a, z, u):
    mu = a[0] * _sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
    v = a[5] * _sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
    return (z - mu) * v + mu


def full_ladder(net, levels, lambdas):
    """The official code's full ladder on the tiny conv nets (``g`` and
    ``g_deconv``): every level's denoising cost lambda_l mean_n ||z -
    zhat_BN||^2 / width over the unlabeled rows, u from the level above
    through V (fc, per unit), a deconvolution (conv) or a depooling (max:
    each value over its 2x2 window; global: broadcast), batch-normalised per
    channel, the gauss combinator per channel below a conv or pool."""
    streams = ("labeled", "unlabeled")
    data = lambda s, suffix="": net.blobs[f"data/{s}{suffix}"].data.astype(np.float64)
    z, mean, var, _ = _encoder(net, levels, [data(s) for s in streams], False, streams)
    zt, _, _, logits = _encoder(net, levels, [data(s, "/noisy") for s in streams], True, streams)
    label = net.blobs["label"].data.astype(int)
    costs = {"loss": -np.mean(np.log(_softmax(logits[0])[np.arange(N), label]))}
    names = ["data"] + levels
    zhat = None
    for l in range(len(names) - 1, -1, -1):
        name = names[l]
        a = [b.data.astype(np.float64) for b in net.params[f"dec:{name}/g"]]
        clean = data("unlabeled") if l == 0 else z[name][1]
        corrupted = data("unlabeled", "/noisy") if l == 0 else zt[name][1]
        if l == len(names) - 1:
            u = _bn(_softmax(logits[1]))[0]
            per_channel = False
        else:
            above = names[l + 1]
            if above == "fc":
                u = _bn(zhat.reshape(N, -1) @ _P(net, f"dec:{name}/V")[0].T)[0].reshape(clean.shape)
                per_channel = False
            else:
                if above.startswith("conv"):
                    pre = _deconv(zhat, _P(net, f"dec:{name}/V")[0], 2 if above == "conv1" else 0)
                elif above == "pool1":
                    pre = zhat.repeat(2, 2).repeat(2, 3)[:, :, :clean.shape[2], :clean.shape[3]]
                else:   # pool2: global
                    pre = np.broadcast_to(zhat, clean.shape)
                u = _bn(pre)[0]
                per_channel = True
        a = [_per_channel(x, u) if per_channel else x.reshape(u.shape[1:]) for x in a]
        flat = lambda x: x.reshape(N, -1) if not per_channel and x.ndim != u.ndim else x
        zhat = _gauss(a, flat(corrupted), u).reshape(clean.shape)
        zhat_bn = zhat if l == 0 else (zhat - mean[name][1]) / np.sqrt(var[name][1] + 1e-10)
        width = np.prod(clean.shape[1:])
        costs[f"dec:loss@{name}"] = lambdas[l] * np.mean(((zhat_bn - clean) ** 2).reshape(N, -1).sum(1)) / width
    return costs


@pytest.mark.parametrize("key", sorted(FULL_NETS))
def test_forward_is_the_full_conv_ladder(key, full, tmp_path, caffe):
    _, levels, classes = FULL_NETS[key]
    path = _with_inputs(full[key] / "full" / "train_val.prototxt", tmp_path / "net.prototxt", SIDES[key])
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(5)
    _randomise(net, rng)
    for name in [n for n in net.params if n.endswith("/up")]:   # the depooling's fixed weights, as generated
        net.params[name][0].data[...] = 1
    for s in ("labeled", "unlabeled"):
        net.blobs[f"data/{s}"].data[...] = rng.uniform(0, 1, net.blobs[f"data/{s}"].data.shape)
    net.blobs["label"].data[...] = rng.integers(0, classes, N)
    net.forward()
    want = full_ladder(net, levels, FULL_LAMBDAS[key])
    got = _caffe_costs(net, path)
    assert sorted(got) == sorted(want) == sorted(["loss"] + [f"dec:loss@{n}" for n in ["data"] + levels])
    for k in want:
        assert want[k] > 1e-3, k
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    # the decoder's own weights and fixed depooling; combinators per channel below a conv or pool
    params = {n: [b.data.shape for b in net.params[n]] for n in net.params if n.startswith("dec:")}
    assert params["dec:data/V"] == [(3, 2, 3, 3)] and params["dec:pool1/V"] == [(4, 3, 3, 3)]
    assert params["dec:conv1/g"] == [(3,)] * 10 and params["dec:data/g"] == [(2,)] * 10
    layers = {l.name: l for l in protos.read_net(path).layer}
    assert ("dec:conv1/up/crop" in layers) == (key == "odd")
    assert [(p.lr_mult, p.decay_mult) for p in layers["dec:conv1/up"].param] == [(0, 0)]
    assert layers["dec:data/V"].convolution_param.weight_filler.variance_norm == 1   # FAN_OUT: fan-in from above
    fresh = caffe.Net(path, caffe.TRAIN)
    np.testing.assert_array_equal(fresh.params["dec:conv1/up"][0].data, 1)


def test_full_conv_ladder_learns(tmp_path):
    """The full ladder on the tiny conv net trains with `caffe train` from
    LMDBs (40 seeded random 2x6x6 images with a brightness ramp): 30
    iterations, every cost finite and logged, the total falling."""
    from recon_dec.data import store
    rng = np.random.default_rng(3)
    images = (rng.uniform(0, 1, (40, 2, 6, 6)) * np.linspace(0.2, 1, 6)[None, None, :, None] * 255).astype(np.uint8)
    for name in ("labeled", "unlabeled", "test"):
        store.write_raw_lmdb(images, rng.integers(0, 3, 40), tmp_path / name, name)
    (tmp_path / "tiny.prototxt").write_text(TINY)
    out = tmp_path / "out"
    assert _generate(out, tmp_path / "tiny.prototxt", "--variant", "full", "--labeled-source", str(tmp_path / "labeled"),
                     "--train-source", str(tmp_path / "unlabeled"), "--val-source", str(tmp_path / "test"),
                     "--lambdas", ",".join(map(str, FULL_LAMBDAS["fc"])), "--batch", "8", "--test-batch", "8",
                     "--test-iter", "1", "--test-interval", "30", "--max-iter", "30", "--random-seed", "2",
                     "--solver-mode", "CPU") == 0
    solver = out / "full" / "train" / "solver.prototxt"
    solver.write_text(re.sub(r"average_loss: \d+", "average_loss: 1", re.sub(r"display: \d+", "display: 1",
                                                                                solver.read_text())))
    assert cli.main(["train", str(out / "full" / "plan.json"), "--stage", "train", "--no-progress"]) == 0
    log = (out / "full" / "logs" / "train.log").read_text()
    heads = {}
    for name, value in re.findall(r"Train net output #\d+: (\S+) = (\S+)", log):
        heads.setdefault(name, []).append(float(value))
    assert sorted(heads) == sorted(["loss"] + [f"dec:loss@{n}" for n in ["data"] + NETS["fc"][1]])
    total = np.sum([v for v in heads.values()], axis=0)
    assert np.all(np.isfinite(total)) and len(total) == 30
    assert np.mean(total[-5:]) < 0.9 * np.mean(total[:5]), total


@pytest.mark.parametrize("changes, message", [
    ([("pool: MAX kernel_size: 2 stride: 2", "pool: MAX kernel_size: 3 stride: 2")],
     "layer 'pool1': --variant full: the decoder copies each pooled value over its window, which needs a kernel "
     "equal to the stride"),
    ([("num_output: 3 kernel_size: 3 pad: 2 }", "num_output: 3 kernel_size: 3 pad: 2 stride: 2 }"),
      ("dim: 6 dim: 6", "dim: 12 dim: 12")],      # conv1 drops the last row and column: 12 -> 7 -> 11
     "layer 'conv1': --variant full: the decoder's deconvolution gives 11x11 from 3x7x7, not the 12x12"),
])
def test_full_conv_ladders_that_cannot_mirror(changes, message, tmp_path, capsys):
    _refused(changes, message, tmp_path, capsys, "--variant", "full", "--lambdas", "1,1,1,1,1,1")
