"""Ladder networks (--method ladder): the generated nets build in pycaffe;
the clean and the corrupted pass share every weight (one blob, one update);
the cross-entropy sees the labeled rows only; the TRAIN forward pass of a
tiny MLP (8-6-4-3, 4 labeled + 4 unlabeled rows) equals a numpy
re-implementation of Algorithm 1 with the same weights and the noise read
from the net, every denoising cost included, and the TEST pass is the clean
pass on the running statistics; a short `recon-dec train` run on MNIST-5k
with 100 labels; a run stopped at N/2 and resumed by `recon-dec train`
ends as the straight one, bit for bit, with and without noise (the noise
layers' streams are in the snapshot, and a restored solver draws the
straight run's noise); bad input gets one line and nothing is written."""
import json
import math
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

from recon_dec import cli
from recon_dec.caffe_io import protos

REPO = pathlib.Path(__file__).resolve().parent.parent
MLP = REPO / "models" / "ladder" / "mlp.prototxt"
N = 4                                   # rows of each stream
TEST_ROWS = 5
LEVELS = [("data", 8), ("fc1", 6), ("fc2", 4), ("fc3", 3)]
LAMBDAS = (0.7, 1.3, 0.4, 2.1)
INPUT_NOISE, LAYER_NOISE = 0.2, 0.3

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 6 } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 4 } }
layer { name: "relu2" type: "ReLU" bottom: "fc2" top: "fc2" }
layer { name: "fc3" type: "InnerProduct" bottom: "fc2" top: "fc3" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc3" top: "prob" }
"""


def _generate(out, net, *extra):
    return cli.main(["generate", "--method", "ladder", "--net", str(net), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The three variants of the tiny MLP, generated once."""
    d = tmp_path_factory.mktemp("ladder")
    (d / "tiny.prototxt").write_text(TINY)
    assert _generate(d / "out", d / "tiny.prototxt", "--variant", "all", "--labeled-source", "/x/labeled",
                     "--train-source", "/x/unlabeled", "--val-source", "/x/test", "--batch", str(N),
                     "--test-batch", str(TEST_ROWS), "--solver-mode", "CPU", "--lambdas",
                     ",".join(map(str, LAMBDAS)), "--input-noise-std", str(INPUT_NOISE)) == 0
    return d / "out"


def _with_inputs(src, dst):
    """The train_val net with its data layers as Input layers (N rows a
    stream in TRAIN, TEST_ROWS in TEST), so pycaffe can feed them."""
    net = protos.read_net(str(src))
    for l in net.layer:
        if l.type == "Data":
            rows = N if l.include[0].phase == 0 else TEST_ROWS
            tops, include = list(l.top), list(l.include)
            l.Clear()
            l.name, l.type = tops[0], "Input"
            l.top.extend(tops)
            l.include.extend(include)
            l.input_param.shape.add().dim.extend([rows, 2, 2, 2])
            l.input_param.shape.add().dim.extend([rows])
    pathlib.Path(dst).write_text(str(net))
    return str(dst)


def _randomise(net, rng):
    """Every learned blob random (weights, beta, gamma, combinator a1..a10);
    the running statistics are left alone."""
    for name, blobs in net.params.items():
        t = net.layer_dict[name].type
        if name.startswith("noisy/") or t in ("BatchStats", "GaussianNoise"):   # noise: its stream's state
            continue
        for i, b in enumerate(blobs):
            if t == "InnerProduct":
                b.data[...] = rng.standard_normal(b.data.shape) * 1.5 / math.sqrt(b.data.shape[1])
            elif t == "Scale":
                b.data[...] = 1 + 0.3 * rng.standard_normal(b.data.shape)
            elif t == "LadderCombinator":
                b.data[...] = 0.5 * rng.standard_normal(b.data.shape) + (1.0 if i in (1, 6) else 0.0)
            else:
                b.data[...] = 0.5 * rng.standard_normal(b.data.shape)


def _feed(net, rng, streams):
    labels = {}
    for s in streams:
        data = "data" if streams == ("",) else f"data/{s}"
        net.blobs[data].data[...] = rng.uniform(0, 1, net.blobs[data].data.shape)
        lab = "label" if s in ("", "labeled") else f"label/{s}"
        labels[s] = rng.integers(0, 3, net.blobs[lab].data.shape)
        net.blobs[lab].data[...] = labels[s]
    return labels


# --------------------------------------------------------------------------
# numpy: Algorithm 1
def _bn(x):
    m, v = x.mean(0), x.var(0)
    return (x - m) / np.sqrt(v + 1e-10), m, v


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _encoder(net, h, noisy, streams):
    """One pass; ``h`` per stream (labeled first). The corrupted pass adds
    the noise the net drew (its GaussianNoise output minus input).
    Returns per level: z, batch mean and variance per stream; the logits."""
    P = lambda n: [b.data.astype(np.float64) for b in net.params[n]]
    z, mean, var = {}, {}, {}
    for i, (name, _) in enumerate(LEVELS[1:], 1):
        z[name], mean[name], var[name] = [], [], []
        for s, x in zip(streams, h):
            zz, m, v = _bn(x @ P(name)[0].T)
            if noisy:
                at = "" if s == "" else f"@{s}"
                zz = zz + (net.blobs[f"noisy/{name}/z{at}"].data - net.blobs[f"noisy/{name}/bn{at}"].data)
            z[name].append(zz)
            mean[name].append(m)
            var[name].append(v)
        pre = [zz + P(f"{name}/beta")[0] for zz in z[name]]
        if i < len(LEVELS) - 1:
            h = [np.maximum(p, 0) for p in pre]
        else:
            h = [P(f"{name}/gamma")[0] * p for p in pre]
    return z, mean, var, h


def algorithm1(net, variant):
    """The costs of Algorithm 1 (official code's choices) for the net's
    current inputs, weights and noise: {cross-entropy, denoising costs},
    the corrupted logits, the clean labeled batch statistics."""
    streams = ("",) if variant == "supervised" else ("labeled", "unlabeled")
    data = lambda s, suffix="": net.blobs[("data" if s == "" else f"data/{s}") + suffix].data.astype(
        np.float64).reshape(N, -1)
    x = [data(s) for s in streams]
    x_noisy = [data(s, "/noisy") for s in streams]
    label = net.blobs["label"].data.astype(int)
    z, mean, var, _ = _encoder(net, x, False, streams)
    zt, _, _, logits_t = _encoder(net, x_noisy, True, streams)
    costs = {"loss": -np.mean(np.log(_softmax(logits_t[0])[np.arange(N), label]))}
    if variant != "supervised":
        lambdas = LAMBDAS if variant == "full" else (0, 0, 0, LAMBDAS[-1])
        zhat = None
        for level in range(len(LEVELS) - 1, -1, -1):
            name, width = LEVELS[level]
            if level == len(LEVELS) - 1:
                u = _bn(_softmax(logits_t[1]))[0]
            else:
                u = _bn(zhat @ net.params[f"dec:{name}/V"][0].data.astype(np.float64).T)[0]
            a = [b.data.astype(np.float64) for b in net.params[f"dec:{name}/g"]]
            corrupted = x_noisy[1] if level == 0 else zt[name][1]
            mu = a[0] * _sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
            v = a[5] * _sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
            zhat = (corrupted - mu) * v + mu
            if level == 0:
                zhat_bn, target = zhat, x[1]
            else:
                zhat_bn, target = (zhat - mean[name][1]) / np.sqrt(var[name][1] + 1e-10), z[name][1]
            if lambdas[level] > 0:
                costs[f"dec:loss@{name}"] = lambdas[level] * np.mean(((zhat_bn - target) ** 2).sum(1)) / width
            if variant == "gamma":
                break
    stats = {name: (mean[name][0], var[name][0]) for name, _ in LEVELS[1:]}
    return costs, logits_t[0], stats


def _caffe_costs(net, path):
    """Each loss top times its loss_weight (the cost as the solver sees it)."""
    weights = {l.name: (l.loss_weight[0] if l.loss_weight else 1.0) for l in protos.read_net(path).layer
               if l.type in ("SoftmaxWithLoss", "EuclideanLoss") and not any(r.phase == 1 for r in l.include)}
    return {n: float(net.blobs[n].data) * w for n, w in weights.items()}


def _clean_test_logits(h, net, stats):
    for i, (name, _) in enumerate(LEVELS[1:], 1):
        m, v = stats[name]
        z = (h @ net.params[name][0].data.astype(np.float64).T - m) / np.sqrt(v + 1e-10)
        pre = z + net.params[f"{name}/beta"][0].data
        h = np.maximum(pre, 0) if i < len(LEVELS) - 1 else net.params[f"{name}/gamma"][0].data * pre
    return h


@pytest.mark.parametrize("variant", ["full", "gamma", "supervised"])
def test_forward_is_algorithm_1(variant, tiny, tmp_path, caffe):
    path = _with_inputs(tiny / variant / "train_val.prototxt", tmp_path / "net.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(7)
    _randomise(net, rng)
    streams = ("",) if variant == "supervised" else ("labeled", "unlabeled")
    _feed(net, rng, streams)
    net.forward()
    want, logits, stats = algorithm1(net, variant)
    got = _caffe_costs(net, path)
    expected = {"full": ["loss"] + [f"dec:loss@{n}" for n, _ in LEVELS], "gamma": ["loss", "dec:loss@fc3"],
                "supervised": ["loss"]}[variant]
    assert sorted(got) == sorted(want) == sorted(expected)
    for k in want:
        assert want[k] > 1e-3, k   # not trivially zero
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    at = "" if variant == "supervised" else "@labeled"
    np.testing.assert_allclose(net.blobs[f"noisy/fc3/logits{at}"].data, logits, rtol=1e-5, atol=1e-5)
    # the noise really is there, and of the asked size (input 0.2, layers 0.3 / 0.5)
    layer_std = 0.5 if variant == "supervised" else LAYER_NOISE
    noise = net.blobs[f"noisy/fc1/z{at}"].data - net.blobs[f"noisy/fc1/bn{at}"].data
    assert 0.1 < noise.std() / layer_std < 3
    # running statistics: the clean labeled half's, unbiased variance
    for name, _ in LEVELS[1:]:
        s = net.params[f"{name}/stats@labeled"]
        np.testing.assert_allclose(s[0].data / s[2].data, stats[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s[1].data / s[2].data, stats[name][1] * N / (N - 1), rtol=1e-5, atol=1e-6)
    # TEST: the clean pass with those statistics, sharing the train net's blobs
    test = caffe.Net(path, caffe.TEST)
    test.share_with(net)
    x = rng.uniform(0, 1, test.blobs["data"].data.shape)
    test.blobs["data"].data[...] = x
    test.blobs["label"].data[...] = rng.integers(0, 3, TEST_ROWS)
    test.forward()
    running = {n: (s[0], s[1] * N / (N - 1)) for n, s in stats.items()}
    want_logits = _clean_test_logits(x.reshape(TEST_ROWS, -1), net, running)
    np.testing.assert_allclose(test.blobs["fc3/logits"].data, want_logits, rtol=1e-5, atol=1e-5)
    acc = np.mean(want_logits.argmax(1) == test.blobs["label"].data)
    assert float(test.blobs["accuracy/top-1"].data) == pytest.approx(acc)
    assert "noisy/fc1" not in test.layer_dict and "dec:fc1/g" not in test.layer_dict


def test_passes_share_every_weight(tiny, tmp_path, caffe):
    path = _with_inputs(tiny / "full" / "train_val.prototxt", tmp_path / "net.prototxt")
    solver_msg = protos.pb2().SolverParameter()
    from google.protobuf import text_format
    text_format.Merge((tiny / "full" / "train" / "solver.prototxt").read_text(), solver_msg)
    assert solver_msg.type == "Adam" and solver_msg.base_lr == pytest.approx(0.002)
    solver_msg.net = path
    solver_msg.snapshot_prefix = str(tmp_path / "snap")
    (tmp_path / "solver.prototxt").write_text(str(solver_msg))
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    rng = np.random.default_rng(3)
    _randomise(net, rng)
    _feed(net, rng, ("labeled", "unlabeled"))
    shared = [n for n in net.params
              if n.startswith("noisy/") and net.layer_dict[n].type not in ("BatchStats", "GaussianNoise")]
    assert sorted(shared) == sorted(f"noisy/{n}" for n in ["fc1", "fc2", "fc3", "fc1/beta", "fc2/beta", "fc3/beta",
                                                           "fc3/gamma"])
    # one blob: written through the clean layer, read through the corrupted one
    net.params["fc2"][0].data[1, 2] = 0.125
    assert net.params["noisy/fc2"][0].data[1, 2] == 0.125
    net.params["noisy/fc3/gamma"][0].data[0] = 2.5
    assert net.params["fc3/gamma"][0].data[0] == 2.5
    before = {n: net.params[n[len("noisy/"):]][0].data.copy() for n in shared}
    decoder = net.params["dec:fc1/V"][0].data.copy()
    solver.step(1)
    for n in shared:
        clean = net.params[n[len("noisy/"):]][0].data
        np.testing.assert_array_equal(net.params[n][0].data, clean, err_msg=n)
        assert not np.allclose(clean, before[n]), n   # the update moved both
    assert not np.allclose(net.params["dec:fc1/V"][0].data, decoder)
    # the TEST net reads the same trained weights
    test = solver.test_nets[0]
    test.share_with(net)
    np.testing.assert_array_equal(test.params["fc2"][0].data, net.params["noisy/fc2"][0].data)


def test_cross_entropy_sees_labeled_rows_only(tiny, tmp_path, caffe):
    path = _with_inputs(tiny / "full" / "train_val.prototxt", tmp_path / "net.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(5)
    _randomise(net, rng)
    _feed(net, rng, ("labeled", "unlabeled"))
    net.forward()
    loss = float(net.blobs["loss"].data)
    logits = net.blobs["noisy/fc3/logits"].data
    logits[N:] = rng.standard_normal(logits[N:].shape) * 10   # the unlabeled rows
    net.forward(start="noisy/fc3/logits/split", end="loss")
    assert float(net.blobs["loss"].data) == loss
    logits[0, 0] += 3.0                                       # a labeled row
    net.forward(start="noisy/fc3/logits/split", end="loss")
    assert float(net.blobs["loss"].data) != pytest.approx(loss)
    ce = {l.name: l for l in protos.read_net(path).layer}["loss"]
    assert list(ce.bottom) == ["noisy/fc3/logits@labeled", "label"]


def test_nets_build_and_stages(tiny, caffe):
    for variant in ("full", "gamma", "supervised"):
        d = tiny / variant
        plan = json.loads((d / "plan.json").read_text())
        train, decay = plan["stages"]
        assert (train["id"], decay["id"]) == ("train", "decay") and decay["requires"] == ["train"]
        net = protos.read_net(str(d / "train" / "train_val.prototxt"))
        assert not net.force_backward
        owned = {l.name for l in net.layer if l.type in ("InnerProduct", "Bias", "Scale", "BatchStats",
                                                         "LadderCombinator")}
        assert decay["init"] == [{"weights": "@stage:train", "layers": decay["init"][0]["layers"]}]
        assert set(decay["init"][0]["layers"]) == owned
        solver = (d / "decay" / "solver.prototxt").read_text()
        assert 'lr_policy: "poly"' in solver and "power: 1" in solver and 'type: "Adam"' in solver
        for l in net.layer:
            if l.name.startswith("dec:") and l.name.endswith("/zhat/bn"):
                assert list(l.propagate_down) == [True, False, False]
        deploy = caffe.Net(str(d / "deploy.prototxt"), caffe.TEST)
        assert deploy.blobs["prob"].data.shape == (1, 3)
        assert {n for n in deploy.params} <= owned


def test_the_shipped_mlp(tmp_path):
    assert _generate(tmp_path / "out", MLP, "--variant", "full", "--labeled-source", "/x/l",
                     "--train-source", "/x/u", "--lambdas-preset", "1000") == 0
    net = {l.name: l for l in protos.read_net(str(tmp_path / "out" / "full" / "train_val.prototxt")).layer}
    widths = [net[f"fc{i}"].inner_product_param.num_output for i in range(1, 7)]
    assert widths == [1000, 500, 250, 250, 250, 10]
    assert net["noisy/fc3/noise@unlabeled"].gaussian_noise_param.std == pytest.approx(0.2)
    assert net["data/labeled/noise"].gaussian_noise_param.std == pytest.approx(0.3)
    # lambda 2000, 20, 0.1 x 5 -> weights 2 lambda / width
    assert net["dec:loss@data"].loss_weight[0] == pytest.approx(2 * 2000 / 784, rel=1e-5)
    assert net["dec:loss@fc1"].loss_weight[0] == pytest.approx(2 * 20 / 1000)
    assert net["dec:loss@fc6"].loss_weight[0] == pytest.approx(2 * 0.1 / 10)
    assert net["fc1"].inner_product_param.weight_filler.std == pytest.approx(1 / 28, rel=1e-5)


def test_short_training_on_mnist5k(tmp_path):
    split = tmp_path / "split"
    assert cli.main(["data", "semi", "--dataset", "mnist5k", "--labels", "100", "--out", str(split),
                     "--no-progress"]) == 0
    out = tmp_path / "out"
    assert _generate(out, MLP, "--variant", "full", "--labeled-source", str(split / "labeled_lmdb"),
                     "--train-source", str(split / "unlabeled_lmdb"), "--val-source", str(split / "test_lmdb"),
                     "--batch", "20", "--test-batch", "50", "--test-iter", "2", "--test-interval", "2",
                     "--max-iter", "2", "--random-seed", "1", "--solver-mode", "CPU") == 0
    assert cli.main(["train", str(out / "full" / "plan.json"), "--all", "--no-progress"]) == 0
    for stage in ("train", "decay"):
        log = (out / "full" / "logs" / f"{stage}.log").read_text()
        train = dict(re.findall(r"Train net output #\d+: (\S+) = (\S+)", log))
        assert set(train) == {"loss"} | {f"dec:loss@{n}" for n in ["data", "fc1", "fc2", "fc3", "fc4", "fc5", "fc6"]}
        assert all(np.isfinite(float(v)) for v in train.values()), train
        test = dict(re.findall(r"Test net output #\d+: (\S+) = (\S+)", log))
        assert 0 <= float(test["accuracy/top-1"]) <= 1 and np.isfinite(float(test["loss/test"]))
    assert (out / "full" / "snapshots" / "decay_iter_2.caffemodel").is_file()


# --------------------------------------------------------------------------
# resume: `recon-dec train` on a run stopped at N/2 continues exactly
RESUME_NET = """name: "resume"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 6 } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""
RESUME_ITERS, RESUME_BATCH, RESUME_ROWS = 8, 4, 8


def _resume_setup(root, *extra):
    """Two generated copies of a tiny full ladder (CPU, random_seed 5, N =
    8 iterations of 4 + 4 rows, snapshots every 4, every iteration's loss in
    the log), reading LMDBs of 8 rows: Caffe's Data layer starts again at
    the first row after a resume, and 4 iterations of 4 rows are exactly
    two passes, so both runs read the same rows at every iteration."""
    from recon_dec.data import store
    (root / "net.prototxt").write_text(RESUME_NET)
    rng = np.random.default_rng(0)
    for name in ("labeled", "unlabeled"):
        store.write_raw_lmdb(rng.integers(0, 256, (RESUME_ROWS, 4, 4), dtype=np.uint8),
                             rng.integers(0, 3, RESUME_ROWS), root / name, name)
    runs = {}
    for run in ("straight", "resumed"):
        assert _generate(root / run, root / "net.prototxt", "--variant", "full", "--labeled-source",
                         str(root / "labeled"), "--train-source", str(root / "unlabeled"), "--batch",
                         str(RESUME_BATCH), "--max-iter", str(RESUME_ITERS), "--snapshot", str(RESUME_ITERS // 2),
                         "--random-seed", "5", "--solver-mode", "CPU", "--lambdas", "1,1,1", *extra) == 0
        runs[run] = root / run / "full"
        solver = runs[run] / "train" / "solver.prototxt"
        solver.write_text(re.sub(r"average_loss: \d+", "average_loss: 1",
                                 re.sub(r"display: \d+", "display: 1", solver.read_text())))
    return runs


def _blobs(path):
    """{layer: [arrays]} of a .caffemodel, or the Adam history of a .solverstate."""
    if str(path).endswith(".solverstate"):
        st = protos.pb2().SolverState()
        st.ParseFromString(pathlib.Path(path).read_bytes())
        return {"iter": [np.array([st.iter])], "history": [np.array(b.data) for b in st.history]}
    m = protos.pb2().NetParameter()
    m.ParseFromString(pathlib.Path(path).read_bytes())
    return {l.name: [np.array(b.data) for b in l.blobs] for l in m.layer if l.blobs}


def _losses(log):
    """{iteration: every loss head as logged} of a train log (display 1)."""
    out, it = {}, None
    for line in log.splitlines():
        m = re.search(r"Iteration (\d+) \(", line)
        if m:
            it = int(m.group(1))
        m = re.search(r"Train net output #\d+: (\S+ = \S+)", line)
        if m and it is not None:
            out.setdefault(it, []).append(m.group(1))
    return out


@pytest.mark.parametrize("noise", ["off", "on"])
def test_resume_continues_exactly(noise, tmp_path):
    """N iterations straight vs N/2, stopped (its snapshot), resumed by
    `recon-dec train` from the .solverstate to N: the same weights, running
    statistics, combinators, noise streams (key and counter), Adam moments
    and losses, bit for bit, with the noise off and on."""
    from recon_dec.caffe_io.tool import caffe_binary
    runs = _resume_setup(tmp_path, *(["--noise-std", "0", "--input-noise-std", "0"] if noise == "off" else []))
    half = RESUME_ITERS // 2
    assert cli.main(["train", str(runs["straight"] / "plan.json"), "--stage", "train", "--no-progress"]) == 0
    # the other run stops at N/2 (a solver with max_iter N/2: Caffe snapshots there), then resumes
    r = runs["resumed"]
    text = (r / "train" / "solver.prototxt").read_text()
    (r / "train" / "half.prototxt").write_text(text.replace(f"max_iter: {RESUME_ITERS}", f"max_iter: {half}"))
    (r / "snapshots").mkdir()
    subprocess.run([caffe_binary(), "train", "-solver", "train/half.prototxt"], cwd=r, check=True,
                   capture_output=True)
    assert sorted(p.name for p in (r / "snapshots").iterdir()) == [f"train_iter_{half}.caffemodel",
                                                                   f"train_iter_{half}.solverstate"]
    assert cli.main(["train", str(r / "plan.json"), "--stage", "train", "--no-progress"]) == 0
    log = (r / "logs" / "train.log").read_text()
    assert f"resuming from {r}/snapshots/train_iter_{half}.solverstate" in log
    straight, resumed = _losses((runs["straight"] / "logs" / "train.log").read_text()), _losses(log)
    assert sorted(resumed) == list(range(half, RESUME_ITERS)) and sorted(straight) == list(range(RESUME_ITERS))
    for ext in ("caffemodel", "solverstate"):
        a = _blobs(runs["straight"] / "snapshots" / f"train_iter_{RESUME_ITERS}.{ext}")
        b = _blobs(r / "snapshots" / f"train_iter_{RESUME_ITERS}.{ext}")
        assert sorted(a) == sorted(b) and len(a[next(iter(a))]) >= 1
        for name in a:
            assert len(a[name]) == len(b[name]) and all(np.array_equal(x, y) for x, y in zip(a[name], b[name])), name
    assert {i: straight[i] for i in range(half, RESUME_ITERS)} == resumed


def test_resume_draws_the_noise_of_the_straight_run(tmp_path, caffe, monkeypatch):
    """Why a resumed run continues exactly: each GaussianNoise layer keeps
    its stream's key and counter in its blob, so the snapshot at iteration
    N/2 holds them and a solver restored from it draws, at its first
    iteration, the noise of iteration N/2 of the straight run (input and
    every layer), bit for bit, not the noise of a fresh start. Before, Caffe
    reseeded its RNG in Solver::Init and the .solverstate held no RNG state:
    the resumed run drew the noise of iterations 0, 1, ... again."""
    runs = _resume_setup(tmp_path)
    half = RESUME_ITERS // 2
    monkeypatch.chdir(runs["straight"])   # the solver's paths are relative to the variant's directory
    os.mkdir("snapshots")                 # Caffe checks it can write there before it starts

    def noise(net):
        out = {"data": net.blobs["data/unlabeled/noisy"].data - net.blobs["data/unlabeled"].data}
        for name in ("fc1", "fc2"):
            out[name] = net.blobs[f"noisy/{name}/z@unlabeled"].data - net.blobs[f"noisy/{name}/bn@unlabeled"].data
        return {k: v.copy() for k, v in out.items()}

    def streams(net):
        return {n: b[0].data.copy() for n, b in net.params.items() if net.layer_dict[n].type == "GaussianNoise"}

    straight = caffe.get_solver("train/solver.prototxt")
    assert sorted(streams(straight.net)) == sorted([f"data/{s}/noise" for s in ("labeled", "unlabeled")] + [
        f"noisy/{n}/noise@{s}" for n in ("fc1", "fc2") for s in ("labeled", "unlabeled")])
    draws, states = [], []
    for _ in range(half + 1):
        states.append(streams(straight.net))
        straight.step(1)
        draws.append(noise(straight.net))
        if straight.iter == half:
            straight.snapshot()
    for name, s in states[half].items():   # [key (4 x 16 bits), counter (4 x 16 bits)]
        assert list(s[4:]) == [half, 0, 0, 0], name
        assert np.array_equal(s[:4], states[0][name][:4]), name
    resumed = caffe.get_solver("train/solver.prototxt")
    resumed.restore(f"snapshots/train_iter_{half}.solverstate")
    assert resumed.iter == half
    got_state = streams(resumed.net)
    assert sorted(got_state) == sorted(states[half])
    for name in got_state:
        np.testing.assert_array_equal(got_state[name], states[half][name], err_msg=name)
    resumed.step(1)
    got = noise(resumed.net)
    for name in got:
        np.testing.assert_array_equal(got[name], draws[half][name], err_msg=name)   # iteration N/2's noise
        assert not np.allclose(got[name], draws[0][name], atol=1e-2), name         # not iteration 0's


# --------------------------------------------------------------------------
def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("change, message", [
    (('layer { name: "fc3"', 'layer { name: "fc2b" type: "InnerProduct" bottom: "fc1" top: "fc2b" '
      'inner_product_param { num_output: 4 } }\nlayer { name: "fc3"'), "layer 'fc2b'"),
    (('layer { name: "relu2" type: "ReLU"', 'layer { name: "relu2" type: "Sigmoid"'),
     "layer 'relu2': unsupported layer type 'Sigmoid'"),
    (('layer { name: "prob"', 'layer { name: "relu3" type: "ReLU" bottom: "fc3" top: "fc3" }\nlayer { name: "prob"'),
     "layer 'relu3': a ReLU after the output layer"),
    (('layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }', ''),
     "layer 'fc1': a hidden layer without a ReLU"),
])
def test_bad_deploys_are_named(change, message, tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(TINY.replace(*change))
    assert _generate(tmp_path / "out", bad, "--variant", "all", "--labeled-source", "/x/l",
                     "--train-source", "/x/u") == 2
    err = _one_line(capsys)
    assert str(bad) in err and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--variant", "full", "--train-source", "/x/u"], "--labeled-source: the labeled LMDB is needed"),
    (["--variant", "gamma", "--labeled-source", "/x/l"], "--train-source: the unlabeled LMDB is needed"),
    (["--variant", "full", "--labeled-source", "/x/l", "--train-source", "/x/u", "--lambdas", "1,2"],
     "--lambdas: 2 values for the 4 levels"),
    (["--variant", "full", "--labeled-source", "/x/l", "--train-source", "/x/u", "--noise-std", "-1"],
     "--noise-std: -1 is not a finite std"),
    (["--variant", "full", "--labeled-source", "/x/l", "--train-source", "/x/u", "--lambdas-preset", "50",
      "--lambdas", "0,0,0,0"], "--lambdas: every lambda is 0"),
])
def test_bad_options_are_named(args, message, tmp_path, capsys):
    (tmp_path / "tiny.prototxt").write_text(TINY)
    assert _generate(tmp_path / "out", tmp_path / "tiny.prototxt", *args) == 2
    err = _one_line(capsys)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def _raw_lmdb(path, shape):
    """An LMDB of 3 raw images of ``shape`` (H x W or C x H x W)."""
    from recon_dec.data import store
    store.write_raw_lmdb(np.zeros((3,) + shape, np.uint8), [0, 1, 2], path, str(path))
    return str(path)


@pytest.mark.parametrize("flag, shape, message", [
    ("--labeled-source", (2, 2), "images with 1 channel, the net takes 2"),
    ("--train-source", (2, 3, 3), "images of 3x3, the net takes 2x2 (no crop)"),
    ("--val-source", (3, 2, 2), "images with 3 channels, the net takes 2"),
])
def test_data_that_does_not_fit_the_net(flag, shape, message, tmp_path, capsys):
    """An LMDB whose images have other channels or another size than the
    deploy's input: refused by generate when it exists (naming the option
    and the LMDB), and by train when it appears later (naming the net's data
    layer) -- one line, nothing written."""
    (tmp_path / "tiny.prototxt").write_text(TINY)
    ok = _raw_lmdb(tmp_path / "ok", (2, 2, 2))
    bad = _raw_lmdb(tmp_path / "bad", shape)
    sources = {"--labeled-source": ok, "--train-source": ok, "--val-source": ok, flag: bad}
    args = ["--variant", "full", "--solver-mode", "CPU"] + [x for kv in sources.items() for x in kv]
    assert _generate(tmp_path / "out", tmp_path / "tiny.prototxt", *args) == 2
    err = _one_line(capsys)
    assert err.startswith(f"recon-dec: error: {flag}: {bad}: {message}"), err
    assert not (tmp_path / "out").exists()
    # generated while the LMDB was not there yet: `recon-dec train` refuses it before writing anything
    sources[flag] = str(tmp_path / "later")
    args = ["--variant", "full", "--solver-mode", "CPU"] + [x for kv in sources.items() for x in kv]
    assert _generate(tmp_path / "out", tmp_path / "tiny.prototxt", *args) == 0
    capsys.readouterr()
    _raw_lmdb(tmp_path / "later", shape)
    before = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*"))
    assert cli.main(["train", str(tmp_path / "out" / "full" / "plan.json"), "--all", "--no-progress"]) == 2
    err = _one_line(capsys)
    layer = {"--labeled-source": "data/labeled", "--train-source": "data/unlabeled", "--val-source": "data"}[flag]
    assert f"train_val.prototxt: layer '{layer}': {tmp_path / 'later'}: " in err, err
    assert message in err, err
    assert sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*")) == before


# --------------------------------------------------------------------------
# the final evaluation's statistics, recomputed over the training set
def _images_lmdb(path, images):
    from recon_dec.data import store
    store.write_raw_lmdb(images, np.zeros(len(images), np.int64), path, str(path))
    return str(path)


def test_statistics_recomputed_over_the_training_set(tiny, tmp_path, caffe):
    """``recompute-stats``: each full batch of the LMDB normalised with its
    own statistics, level by level, the weights fixed; the stored running
    statistics become the batches' average mean and unbiased variance (as
    numpy computes them), the incomplete last batch left out, every other
    blob of the caffemodel unchanged; the deploy then predicts with them."""
    path = _with_inputs(tiny / "full" / "train_val.prototxt", tmp_path / "net.prototxt")
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(11)
    _randomise(net, rng)
    for s in net.params["fc2/stats@labeled"]:   # stale running statistics, to be replaced
        s.data[...] = rng.uniform(1, 2, s.data.shape)
    weights = str(tmp_path / "trained.caffemodel")
    net.save(weights)
    images = rng.integers(0, 256, (11, 2, 2, 2), dtype=np.uint8)
    db = _images_lmdb(tmp_path / "train_lmdb", images)
    out = tmp_path / "restat.caffemodel"
    scale = 1 / 255.0
    assert cli.main(["recompute-stats", "--net", str(tiny / "full" / "deploy.prototxt"), "--weights", weights,
                     "--db", db, "--out", str(out), "--batch-size", str(N), "--scale", str(scale)]) == 0
    W = lambda n: net.params[n][0].data.astype(np.float64)
    want = {name: ([], []) for name, _ in LEVELS[1:]}
    for b in range(len(images) // N):            # 2 full batches of 4; the last 3 images left out
        h = images[b * N:(b + 1) * N].reshape(N, -1).astype(np.float64) * scale
        for i, (name, _) in enumerate(LEVELS[1:], 1):
            z, m, v = _bn(h @ W(name).T)
            want[name][0].append(m)
            want[name][1].append(v * N / (N - 1))
            if i < len(LEVELS) - 1:
                h = np.maximum(z + net.params[f"{name}/beta"][0].data, 0)
    restat = caffe.Net(str(tiny / "full" / "deploy.prototxt"), caffe.TEST, weights=str(out))
    before = caffe.Net(str(tiny / "full" / "deploy.prototxt"), caffe.TEST, weights=weights)
    for name, (means, variances) in want.items():
        s = restat.params[f"{name}/stats@labeled"]
        np.testing.assert_allclose(s[0].data / s[2].data, np.mean(means, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s[1].data / s[2].data, np.mean(variances, 0), rtol=1e-5, atol=1e-6)
    stale, new = before.params["fc2/stats@labeled"], restat.params["fc2/stats@labeled"]
    assert not np.allclose(new[0].data / new[2].data, stale[0].data / stale[2].data)
    from recon_dec.caffe_io import protos as p
    a = p.caffemodel_layers(p.read_caffemodel(weights))
    b = p.caffemodel_layers(p.read_caffemodel(str(out)))
    assert sorted(a) == sorted(b)
    changed = sorted(n for n in a if any(list(x.data) != list(y.data) for x, y in zip(a[n].blobs, b[n].blobs)))
    assert changed == sorted(f"{name}/stats@labeled" for name in want)   # and nothing else
    # the deploy predicts with the recomputed statistics
    x = images[:N].astype(np.float64) * scale
    restat.blobs["data"].reshape(N, 2, 2, 2)
    restat.blobs["data"].data[...] = x
    restat.forward()
    stats = {n: (np.mean(m, 0), np.mean(v, 0)) for n, (m, v) in want.items()}
    np.testing.assert_allclose(restat.blobs["fc3/logits"].data, _clean_test_logits(x.reshape(N, -1), net, stats),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("no statistics", "no BatchNorm or BatchStats layer, so no statistics to recompute"),
    ("other size", "key 00000000: a 3x3 image; the net"),
    ("one image", "one image; batch statistics need two or more"),
])
def test_recompute_stats_bad_input(case, message, tiny, tmp_path, capsys, caffe):
    deploy = str(tiny / "full" / "deploy.prototxt")
    net = caffe.Net(deploy, caffe.TEST)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    db = _raw_lmdb(tmp_path / "db", (2, 3, 3) if case == "other size" else (2, 2, 2))
    if case == "one image":
        db = _images_lmdb(tmp_path / "one", np.zeros((1, 2, 2, 2), np.uint8))
    if case == "no statistics":
        deploy = str(tmp_path / "plain.prototxt")
        pathlib.Path(deploy).write_text(TINY)
    out = tmp_path / "out.caffemodel"
    assert cli.main(["recompute-stats", "--net", deploy, "--weights", weights, "--db", db, "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert message in err and (deploy in err or db in err), err
    assert not out.exists()
