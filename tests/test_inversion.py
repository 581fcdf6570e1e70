"""Deep-network inversion (--method inversion): the generated decoder is
exactly the transpose of the classifier's Jacobian -- its output equals
Caffe's own backward pass of the encoder with f(x) as the top diff -- for
plain nets with max and mean pooling and for a residual net; the gradient
of the reconstruction loss with respect to the (shared) weights matches
finite differences; the training nets build, share weights and train."""
import pathlib

import numpy as np
import pytest

from recon_dec import cli
from recon_dec.caffe_io import protos
from recon_dec.graph import builder
from recon_dec.graph import layers as L
from recon_dec.graph.dag import load_graph
from recon_dec.graph.transpose import encoder_layers, transpose

REPO = pathlib.Path(__file__).resolve().parent.parent
MODELS = REPO / "models" / "inversion"


def _decoder_net(g, batch, path, loss=False):
    layers = [builder.input_layer(g, batch)] + encoder_layers(g) + transpose(g, g.output_blob)[0]
    if loss:
        layers.append(L.euclidean_loss("R", "dec:data", "data", 1.0))
    net = builder.net("decoder", layers)
    pathlib.Path(path).write_text(str(net))
    return str(path)


def _backward_net(model, batch, path):
    net = protos.load_net(str(model))
    net.force_backward = True
    net.layer[0].input_param.shape[0].dim[0] = batch
    pathlib.Path(path).write_text(str(net))
    return str(path)


@pytest.mark.parametrize("model", ["smallcnn_max", "smallcnn_mean", "resnet2_32_max", "resnet2_32_mean",
                                   "largecnn_max"])
def test_decoder_is_caffes_backward_pass(model, tmp_path, caffe):
    g = load_graph(MODELS / f"{model}.prototxt")
    dec = caffe.Net(_decoder_net(g, 3, tmp_path / "dec.prototxt"), caffe.TEST)
    ref = caffe.Net(_backward_net(MODELS / f"{model}.prototxt", 3, tmp_path / "ref.prototxt"), caffe.TEST)
    rng = np.random.default_rng(0)
    for name, blobs in ref.params.items():
        for i, b in enumerate(blobs):
            b.data[...] = rng.standard_normal(b.data.shape) * np.sqrt(2.0 / max(1, b.data[0].size))
            dec.params[name][i].data[...] = b.data
    x = rng.uniform(0, 1, ref.blobs["data"].data.shape)
    ref.blobs["data"].data[...] = x
    dec.blobs["data"].data[...] = x
    out = ref.forward()[g.output_blob]
    dec.forward()
    ref.blobs[g.output_blob].diff[...] = out          # v = f(x)
    ref.backward()
    want = ref.blobs["data"].diff
    got = dec.blobs["dec:data"].data
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # the decoder owns no weights of its own: every parameter is shared with the classifier
    proto = {l.name: l for l in protos.read_net(str(tmp_path / "dec.prototxt")).layer}
    for name, l in proto.items():
        if name.startswith("dec:") and l.type in ("Deconvolution", "InnerProduct") and "pool" not in name:
            assert l.param[0].name == f"{name[4:]}#0" and not (
                l.convolution_param.bias_term if l.type == "Deconvolution" else l.inner_product_param.bias_term)


TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc2" type: "InnerProduct" bottom: "pool1" top: "fc2" inner_product_param { num_output: 3 } }
"""


def test_reconstruction_gradient_matches_finite_differences(tmp_path, caffe):
    """R = ||(df/dx)^T f(x) - x||^2 / 2N through shared weights (overlapping
    3x3/2 max pooling, so the unpooling sums): Caffe's gradient of every
    weight against central differences."""
    (tmp_path / "tiny.prototxt").write_text(TINY)
    g = load_graph(tmp_path / "tiny.prototxt")
    net = caffe.Net(_decoder_net(g, 2, tmp_path / "r.prototxt", loss=True), caffe.TRAIN)
    rng = np.random.default_rng(4)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * 0.5
    net.blobs["data"].data[...] = rng.uniform(0, 1, net.blobs["data"].data.shape)
    net.forward()
    net.backward()
    eps, checked = 1e-2, 0
    for name in ("conv1", "fc2"):
        w = net.params[name][0]
        grad = w.diff.copy()
        for idx in np.ndindex(*w.data.shape):
            old = float(w.data[idx])
            w.data[idx] = old + eps
            up = float(net.forward()["R"])
            w.data[idx] = old - eps
            down = float(net.forward()["R"])
            w.data[idx] = old
            numeric = (up - down) / (2 * eps)
            assert grad[idx] == pytest.approx(numeric, rel=2e-2, abs=2e-3), (name, idx)
            checked += 1
    assert checked == 2 * 9 + 3 * 2 * 3 * 3   # conv1 2x1x3x3, fc2 3 x (2x3x3)


def test_unsupported_layers_are_named(tmp_path, capsys):
    (tmp_path / "tiny.prototxt").write_text(TINY)
    bad = tmp_path / "lrn.prototxt"
    bad.write_text(TINY.replace('layer { name: "fc2"', 'layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" }\n'
                                'layer { name: "fc2"').replace('bottom: "pool1" top: "fc2"', 'bottom: "norm1" top: "fc2"'))
    rc = cli.main(["generate", "--method", "inversion", "--net", str(bad), "--variant", "semi",
                   "--out", str(tmp_path / "out"), "--labeled-source", "/x", "--train-source", "/y"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{bad}: layer 'norm1': unsupported layer type 'LRN'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    sig = tmp_path / "sigmoid.prototxt"
    sig.write_text(TINY.replace('type: "ReLU"', 'type: "Sigmoid"'))
    rc = cli.main(["generate", "--method", "inversion", "--net", str(sig), "--variant", "semi",
                   "--out", str(tmp_path / "out"), "--labeled-source", "/x", "--train-source", "/y"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "layer 'relu1': unsupported layer type 'Sigmoid'" in err
    rc = cli.main(["generate", "--method", "inversion", "--net", str(tmp_path / "tiny.prototxt"), "--variant",
                   "semi", "--out", str(tmp_path / "out"), "--train-source", "/y"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--labeled-source: the labeled LMDB is needed" in err


@pytest.mark.parametrize("model", ["resnet2_32_mean", "smallcnn_max"])
def test_generate_builds_every_net(model, tmp_path, caffe):
    """generate builds every net in Caffe before writing (the training net
    slices the batch at the labeled rows: checked at its real batch)."""
    out = tmp_path / "out"
    assert cli.main(["generate", "--method", "inversion", "--net", str(MODELS / f"{model}.prototxt"),
                     "--variant", "all", "--out", str(out), "--labeled-source", "/l", "--train-source", "/u",
                     "--val-source", "/t", "--labeled-batch", "20", "--batch", "30"]) == 0
    layers = {l.name: l for l in protos.read_net(str(out / "semi" / "train" / "train_val.prototxt")).layer}
    assert list(layers["logits/slice"].slice_param.slice_point) == [20]
    assert layers["loss"].loss_weight[0] == pytest.approx(0.7)
    assert layers["loss/entropy"].loss_weight[0] == pytest.approx(0.3 * 0.8)
    assert layers["dec:loss@data"].loss_weight[0] == pytest.approx(0.3 * 0.2 * 2 / 784)
    sup = {l.type for l in protos.read_net(str(out / "supervised" / "train" / "train_val.prototxt")).layer}
    assert "EntropyLoss" not in sup and "Deconvolution" not in sup and "Threshold" not in sup


def test_generate_without_val_source(tmp_path, caffe):
    """Without --val-source the training net has no TEST-only layer (a TEST
    loss or accuracy would read a blob no TEST layer writes)."""
    out = tmp_path / "out"
    assert cli.main(["generate", "--method", "inversion", "--net", str(MODELS / "smallcnn_max.prototxt"),
                     "--variant", "all", "--out", str(out), "--labeled-source", "/l", "--train-source", "/u"]) == 0
    for v in ("semi", "supervised"):
        net = protos.read_net(str(out / v / "train" / "train_val.prototxt"))
        assert not [l.name for l in net.layer if any(r.phase == 1 for r in l.include)], v
