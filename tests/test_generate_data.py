"""Generated nets with real data: the ScaleJitterData template on a real
encoded-image LMDB, and a variant's own deploy net (with decoder) evaluated
densely at a size its decoder could not mirror."""
import math
import os

import numpy as np
import pytest

from generate_helpers import SMALL, generate
from recon_dec.data import mnist
from recon_dec.data import store as data
from recon_dec.runners import evaluate



@pytest.fixture(scope="module")
def digits_db(tmp_path_factory):
    images, labels = mnist.load_mnist_5k()
    images = mnist.pad(images[:64], side=40)
    db = tmp_path_factory.mktemp("db") / "digits"
    data.build_lmdb([(images[i], int(labels[i])) for i in range(64)], db, progress=False)
    return str(db), labels[:64]


def test_scale_jitter_template_feeds_real_batches(tmp_path, digits_db, caffe):
    db, labels = digits_db
    g = generate(SMALL, ["swwae-all"], tmp_path, data="scale-jitter", train_source=db, val_source=db,
                 mean=(16.0,), mirror=False, scale_range=(36, 48), test_size=40, threads=2,
                 recon=False, solver_mode="CPU")
    plan_dir = os.path.dirname(g["plans"]["swwae-all"])
    net = caffe.Net(os.path.join(plan_dir, "step4", "train_val.prototxt"), caffe.TRAIN)
    assert net.layers[0].type == "ScaleJitterData"
    out = net.forward()
    assert net.blobs["data"].data.shape == (16, 1, 32, 32)
    # labels come from the LMDB in order, and the images are real digits:
    # mean-subtracted pixels reach 255 - 16 on the strokes
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:16])
    assert net.blobs["data"].data.max() > 200
    assert all(math.isfinite(float(v)) for v in out.values())
    assert set(out) >= {"loss", "dec:loss@data/scaled"}
    net.backward()


def test_variant_deploy_evaluates_densely(tmp_path, digits_db, caffe):
    """The deploy net of swwae-all has a decoder whose unpooling only mirrors
    32x32 inputs; evaluation drops it (dec: layers) and runs at 40x40."""
    db, _ = digits_db
    g = generate(SMALL, ["swwae-all"], tmp_path, recon=False)
    deploy = os.path.join(os.path.dirname(g["plans"]["swwae-all"]), "deploy.prototxt")
    net = caffe.Net(deploy, caffe.TEST)  # random weights, saved as a caffemodel
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    single = evaluate.evaluate(deploy, weights, db, scheme="single-crop", shorter_edge=40, crop=32,
                               mean=[16.0], progress=False, return_scores=True)
    dense = evaluate.evaluate(deploy, weights, db, scheme="dense", shorter_edge=40, crop=32,
                              mean=[16.0], mirror=False, progress=False, return_scores=True)
    assert single["n"] == dense["n"] == 64
    for r in (single, dense):
        assert 0 <= r["top1_error"] <= 100 and math.isfinite(r["top5_error"])


def test_draw_renders_every_net(tmp_path):
    """--draw: one PNG per generated net, decoder blobs kept apart (pydot
    would merge every "dec:..." name into one node "dec")."""
    import shutil
    if shutil.which("dot") is None:
        pytest.fail("graphviz `dot` missing: tools/setup.sh installs it")
    g = generate(SMALL, ["swwae-all"], tmp_path, recon=False, draw=True)
    nets = [p for p in g["files"] if p.endswith(".prototxt") and "solver" not in p]
    assert len(g["drawn"]) == len(nets) == 5
    for png in g["drawn"]:
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from caffe import draw as caffe_draw
    from recon_dec.caffe_io import protos
    from recon_dec.runners.generate import DRAWN_COLON, drawable
    deploy = os.path.join(os.path.dirname(g["plans"]["swwae-all"]), "deploy.prototxt")
    param = drawable(protos.read_net(deploy))
    nodes = {n.get_name().strip('"') for n in caffe_draw.get_pydot_graph(param, "LR").get_nodes()}
    assert "dec" not in nodes
    assert sum(1 for n in nodes if n.startswith("dec" + DRAWN_COLON)) >= 6
