"""recon_dec.evaluate / report: fc->conv surgery, single-crop vs dense,
the whole tiny pipeline (images -> LMDB -> 2 stages -> eval -> table)."""
import csv
import json
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import recon_dec_fixtures as fx  # noqa: E402
from recon_dec.data import store as data  # noqa: E402
from recon_dec.experiments import report  # noqa: E402
from recon_dec.caffe_io import protos  # noqa: E402
from recon_dec.runners import evaluate, train  # noqa: E402
from recon_dec.errors import ReconDecError  # noqa: E402


def _random_model(tmp_path, n_classes=4, size=28, seed=0):
    import caffe
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    deploy = fx.write(str(tmp_path / "deploy.prototxt"), fx.deploy_net(n_classes, size))
    net = caffe.Net(deploy, caffe.TEST)
    rng = np.random.RandomState(seed)
    for v in net.params.values():
        for b in v:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    net.save(str(tmp_path / "w.caffemodel"))
    return deploy, str(tmp_path / "w.caffemodel")


def test_fc_to_conv_preserves_outputs(tmp_path):
    deploy, w = _random_model(tmp_path)
    net = evaluate.load_net(deploy, w)
    fc = evaluate.fully_convolutional(deploy, net, 28, str(tmp_path / "fcn.prototxt"))
    conv = [l for l in protos.read_net(str(tmp_path / "fcn.prototxt")).layer if l.name in ("fc1", "fc2")]
    assert [(l.type, l.convolution_param.kernel_h, l.convolution_param.kernel_w) for l in conv] == [
        ("Convolution", 13, 13), ("Convolution", 1, 1)]
    x = np.random.RandomState(1).normal(0, 1, (3, 3, 28, 28)).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    net.forward()
    fc.blobs["data"].reshape(*x.shape)
    fc.blobs["data"].data[...] = x
    fc.forward()
    assert fc.blobs["prob"].data.shape == (3, 4, 1, 1)
    assert np.allclose(net.blobs["prob"].data, fc.blobs["prob"].data[:, :, 0, 0], atol=1e-6)
    # a bigger input gives a grid: (36 - 2) / 2 = 17 -> 17 - 13 + 1 = 5
    fc.blobs["data"].reshape(1, 3, 36, 44)
    fc.forward()
    assert fc.blobs["prob"].data.shape == (1, 4, 5, 9)


def test_dense_equals_single_crop_at_crop_size(tmp_path):
    deploy, w = _random_model(tmp_path)
    rng = np.random.RandomState(3)
    imgs = [fx.pattern(i % 4, 28, 28, rng) for i in range(12)]
    data.build_lmdb([(im, i % 4) for i, im in enumerate(imgs)], tmp_path / "db", progress=False)
    data.build_lmdb([(im[:, ::-1].copy(), i % 4) for i, im in enumerate(imgs)], tmp_path / "flip",
                    progress=False)
    kw = dict(shorter_edge=28, crop=28, mean=[128], scale=1 / 64, progress=False, return_scores=True)
    single = evaluate.evaluate(deploy, w, tmp_path / "db", "single-crop", batch_size=5, **kw)
    dense = evaluate.evaluate(deploy, w, tmp_path / "db", "dense", mirror=False, **kw)
    assert np.allclose(single["scores"], dense["scores"], atol=1e-5)
    assert single["top1_error"] == dense["top1_error"]
    # with the mirror: the average of the image's and its mirror's scores
    flip = evaluate.evaluate(deploy, w, tmp_path / "flip", "single-crop", **kw)
    both = evaluate.evaluate(deploy, w, tmp_path / "db", "dense", **kw)
    assert np.allclose(both["scores"], (single["scores"] + flip["scores"]) / 2, atol=1e-5)
    assert both["n"] == 12 and both["classes"] == 4 and both["top5_k"] == 4
    assert both["top5_error"] == 0.0  # top-4 of 4 classes


def test_topk_errors_numbers():
    s = np.array([[0.1, 0.5, 0.2, 0.15, 0.05, 0, 0],
                  [0.3, 0.1, 0.2, 0.15, 0.25, 0, 0],
                  [0, 0, 0, 0, 0.1, 0.2, 0.7]])
    assert evaluate.topk_errors(s, [1, 5, 6]) == (pytest.approx(100 / 3), pytest.approx(100 / 3), 5)
    assert evaluate.topk_errors(s[:, :3], [1, 2, 0], k=5)[2] == 3


def test_weights_not_matching_and_bad_db(tmp_path):
    deploy, w = _random_model(tmp_path)
    data.build_lmdb([(np.zeros((28, 28, 3), np.uint8), 0)], tmp_path / "db", progress=False)
    other = tmp_path / "o"
    other.mkdir()
    _, w7 = _random_model(other, n_classes=7)
    with pytest.raises(ReconDecError) as e:
        evaluate.evaluate(deploy, w7, tmp_path / "db", shorter_edge=28, crop=28, progress=False)
    assert str(e.value) == (f"{w7}: layer 'fc2': param 0 has shape 7x16, the net ({deploy}) needs 4x16")
    with pytest.raises(ReconDecError, match=f"{tmp_path}/missing: no such LMDB"):
        evaluate.evaluate(deploy, w, tmp_path / "missing", shorter_edge=28, crop=28, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.mdb").write_bytes(b"x" * 5000)
    with pytest.raises(ReconDecError, match=f"{tmp_path}/bad: corrupt"):
        evaluate.evaluate(deploy, w, tmp_path / "bad", shorter_edge=28, crop=28, progress=False)


def test_table_layout_and_seeds(tmp_path):
    res = []
    for model, seeds in (("baseline", [29.0, 29.5]), ("swwae-all", [27.0])):
        for v in seeds:
            res.append({"model": model, "split": "val", "scheme": "single-crop",
                        "top1_error": v, "top5_error": v / 3})
    res.append({"model": "baseline", "split": "val", "scheme": "dense", "top1_error": 27.0,
                "top5_error": 9.0})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res[-1]))
    md = report.table(res[:-1] + [str(path)], out_dir=str(tmp_path / "t"))
    lines = md.splitlines()
    assert lines[0].startswith("| model | single-crop top-1 train | single-crop top-1 val |")
    base = lines[2].split(" | ")
    assert base[0] == "| VGGNet (baseline)"
    assert base[1] == "– (17.43)"
    assert base[2] == "29.25 ± 0.35 (29.05, +0.20)"
    assert base[5] == "27.00 (26.97, +0.03)"
    assert lines[3].split(" | ")[2] == "27.00 (27.39, -0.39)"
    rows = list(csv.DictReader(open(tmp_path / "t" / "table1.csv")))
    r = [x for x in rows if x["model"] == "baseline" and x["column"] == "single-crop top-1 val"][0]
    assert (r["ours_mean"], r["ours_std"], r["n"], r["paper"], r["diff"]) == (
        "29.2500", "0.3536", "2", "29.0500", "0.2000")
    assert open(tmp_path / "t" / "table1.md").read() == md


def test_tiny_pipeline_images_to_table(tmp_path):
    """Images -> LMDBs -> stage 2 -> stage 4 (@stage:2) -> both schemes ->
    Table: the whole chain on CPU."""
    t0 = time.time()
    lst, items = fx.make_image_folder(str(tmp_path / "img"), per_class=10)
    data.build_lmdb(data.read_list(lst, str(tmp_path / "img")), tmp_path / "train",
                    shorter_edge=40, encoding="jpg", progress=False)
    _, vitems = fx.make_image_folder(str(tmp_path / "vimg"), per_class=6, seed=7)
    data.build_lmdb(vitems, tmp_path / "val", shorter_edge=32, encoding="png", progress=False)
    d = str(tmp_path / "swwae-all")
    plan = fx.two_stage_plan(d, str(tmp_path / "train"), str(tmp_path / "val"), iters2=40, iters4=60)
    outs = train.run_all(plan, progress=False)
    deploy = os.path.join(d, "deploy.prototxt")
    kw = dict(shorter_edge=32, crop=28, mean=[128], scale=1 / 64, progress=False, model="swwae-all")
    results = [evaluate.evaluate(deploy, outs[-1], tmp_path / "val", "single-crop", **kw),
               evaluate.evaluate(deploy, outs[-1], tmp_path / "val", "dense", **kw),
               evaluate.evaluate(deploy, outs[-1], tmp_path / "train", train_subset=20, **kw)]
    single, dense, tr = results
    assert (single["n"], dense["n"], tr["n"]) == (24, 24, 20)
    assert (tr["split"], tr["scheme"]) == ("train", "single-crop")
    # 4 easy classes: well below chance (75 %) after 100 iterations
    assert single["top1_error"] <= 25.0 and dense["top1_error"] <= 25.0
    assert tr["top1_error"] <= 25.0
    md = report.table(results, out_dir=str(tmp_path / "table"))
    row = md.splitlines()[2]
    assert row.startswith("| SWWAE-all | ") and "(27.39, " in row and "(25.79, " in row
    assert time.time() - t0 < 180
