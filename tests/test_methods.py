"""The method interface and the graph builder, used from outside the package
as a user adding a method would: a method defined here, registered,
generated and trained with ``caffe train``; encoder passes sharing weights;
``init[].layers`` enforced by the training driver; the package's layering."""
import ast
import json
import pathlib

import numpy as np
import pytest

import recon_dec_fixtures as fx
from generate_helpers import SMALL, read_net
from recon_dec import cli, methods
from recon_dec.data import mnist
from recon_dec.data import store as data
from recon_dec.graph import builder
from recon_dec.graph import layers as L
from recon_dec.graph.builder import EncoderPass
from recon_dec.runners import plan as plans
from recon_dec.runners import train

REPO = pathlib.Path(__file__).resolve().parent.parent


class LinearDecoder(methods.Method):
    """A one-layer linear decoder from the classifier's output back to the
    image, the encoder frozen: the smallest method there is."""
    name = "test-linear-decoder"
    help = "a linear decoder from the class scores to the image, encoder frozen"
    variants = ("linear",)
    stage_defaults = {"decoder": dict(batch=8, iter_size=1, base_lr=0.05, lr_policy="fixed", gamma=0.1,
                                      stepsize=0, max_iter=12, weight_decay=0.0, snapshot=1000,
                                      momentum=0.9, random_seed=3)}

    def build(self, ctx, variants):
        enc = ctx.enc
        _, c, h, w = enc.input_shape

        def decoder():
            ip = L.ip_layer("dec:linear", enc.output_blob, "dec:flat", c * h * w, std=0.01)
            return [ip, L.reshape("dec:data/reshape", "dec:flat", "dec:data", [0, c, h, w])]

        settings = ctx.settings("decoder")
        net = ctx.data_layers(settings["batch"]) + [builder.scaled_data()]
        net += EncoderPass(enc, freeze=builder.frozen, switches=False).layers + decoder()
        net.append(L.euclidean_loss("dec:loss@data/scaled", "dec:data", builder.IMAGE_TARGET, 1.0))
        net += ctx.classifier_heads()
        deploy = [ctx.input_layer()] + EncoderPass(enc, switches=False).layers + decoder()
        init = [methods.Init("@pretrained", [l.name for l in enc.param_layers])] if ctx.pretrained else []
        stage = methods.Stage("decoder", "decoder", "the linear decoder, encoder frozen",
                              builder.net("linear", net), settings, init=init)
        return [methods.Variant("linear", [stage], builder.net("linear-deploy", deploy))]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    images, labels = mnist.load_mnist_5k()
    images = mnist.pad(images[:96], side=32)
    d = tmp_path_factory.mktemp("digits")
    data.build_lmdb([(images[i], int(labels[i])) for i in range(96)], d / "db", progress=False)
    return str(d / "db")


def test_a_method_defined_outside_the_package_generates_and_trains(tmp_path, digits, caffe):
    methods.register(LinearDecoder())
    # a "pretrained" classifier: random weights of the small VGG
    pre = caffe.Net(SMALL, caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in pre.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * 0.05
    pre.save(str(tmp_path / "pre.caffemodel"))
    out = tmp_path / "out"
    assert cli.main(["generate", "--method", "test-linear-decoder", "--net", SMALL, "--variant", "all",
                     "--out", str(out), "--weights", str(tmp_path / "pre.caffemodel"),
                     "--train-source", digits, "--mean", "16", "--solver-mode", "CPU",
                     "--max-iter", "decoder=12"]) == 0
    plan_path = out / "linear" / "plan.json"
    plan = json.loads(plan_path.read_text())
    assert plan["method"] == "test-linear-decoder" and [s["id"] for s in plan["stages"]] == ["decoder"]
    assert "--step2-lr" not in (out / "README.md").read_text()
    # the paper's own options are refused for this method
    assert cli.main(["generate", "--method", "test-linear-decoder", "--net", SMALL, "--variant", "all",
                     "--out", str(tmp_path / "x"), "--step2-lr", "1=1e-3"]) == 2
    assert not (tmp_path / "x").exists()

    assert cli.main(["train", str(plan_path), "--all", "--no-progress"]) == 0
    log = (out / "linear" / "logs" / "decoder.log").read_text()
    assert "caffe train" in log.splitlines()[1] and "decoder_iter_12.caffemodel" in log
    losses = [float(l.split("= ")[-1].split()[0]) for l in log.splitlines()
              if "Train net output" in l and "dec:loss" in l]
    assert losses and all(np.isfinite(losses))
    trained = caffe.Net(str(out / "linear" / "deploy.prototxt"),
                        str(out / "linear" / "snapshots" / "decoder_iter_12.caffemodel"), caffe.TEST)
    for name, blobs in pre.params.items():  # the encoder stayed frozen at the pretrained weights
        for a, b in zip(blobs, trained.params[name]):
            np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    fresh = caffe.Net(str(out / "linear" / "deploy.prototxt"), caffe.TEST)
    assert not np.allclose(fresh.params["dec:linear"][0].data, trained.params["dec:linear"][0].data)


def _two_pass_net(path, enc):
    """A clean and a corrupted pass (x 0.5 after every ReLU) over one set of weights."""
    def halve(e, blob):
        if e is None or e.type != "ReLU":
            return None
        p = L.layer(f"noisy/{e.name}/halve", "Power", [blob], [f"noisy/{e.name}/halved"])
        p.power_param.scale = 0.5
        return [p], p.top[0]

    clean = EncoderPass(enc, share="", relu_masks=True, preactivations=True)
    noisy = EncoderPass(enc, prefix="noisy/", share="", hook=halve, switches=False, dropout=False)
    loss = L.euclidean_loss("agree", clean.output_blob, noisy.output_blob, 1.0)
    inp = builder.input_layer(enc, 2)
    net = builder.net("two-pass", [inp] + clean.layers + noisy.layers + [loss])
    pathlib.Path(path).write_text(str(net))
    return clean, noisy


def test_encoder_passes_share_weights_and_expose_their_blobs(tmp_path, caffe):
    from recon_dec.graph.encoder import load_encoder
    enc = load_encoder(SMALL)
    path = str(tmp_path / "two.prototxt")
    clean, noisy = _two_pass_net(path, enc)
    proto = {l.name: l for l in read_net(path).layer}
    assert proto["noisy/conv1_1"].param[0].name == proto["conv1_1"].param[0].name == "conv1_1#0"
    assert proto["noisy/conv1_1"].bottom[0] == "data" and proto["noisy/conv1_2"].bottom[0] == "noisy/conv1_1/relu/halved"
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * 0.1
    # one blob: the corrupted pass's layer reads the same memory
    net.params["conv1_1"][0].data[0, 0, 0, 0] = 0.125
    assert net.params["noisy/conv1_1"][0].data[0, 0, 0, 0] == 0.125
    net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].data.shape)
    net.forward()
    pre, act = net.blobs[clean.preactivation["conv1_1"]].data, net.blobs[clean.output["conv1_1/relu"]].data
    np.testing.assert_array_equal(act, np.maximum(pre, 0))
    np.testing.assert_array_equal(net.blobs[clean.masks["conv1_1/relu"]].data, (pre > 0).astype(np.float32))
    np.testing.assert_allclose(net.blobs["noisy/conv1_1/relu/halved"].data,
                               0.5 * np.maximum(net.blobs["noisy/conv1_1"].data, 0), rtol=1e-6)
    assert clean.switches == {"conv1_2/pool": "conv1_2/pool-mask", "conv2_2/pool": "conv2_2/pool-mask",
                              "conv3_2/pool": "conv3_2/pool-mask"}
    # shared: one diff, the sum of both passes' gradients (Caffe accumulates into the owner)
    net.backward()
    shared = net.params["conv1_1"][0].diff.copy()
    assert np.any(shared != 0)
    np.testing.assert_array_equal(net.params["noisy/conv1_1"][0].diff, shared)


def test_init_layers_enforced(tmp_path):
    """Stage 4 initialises only conv1 from stage 2's output (which holds
    conv1, fc1 and fc2): fc1 and fc2 keep their filler values."""
    _, items = fx.make_image_folder(str(tmp_path / "img"), per_class=4)
    data.build_lmdb(items, tmp_path / "db", shorter_edge=40, progress=False)
    db = str(tmp_path / "db")
    plan_path = fx.two_stage_plan(str(tmp_path / "run"), db, db, iters2=10, iters4=1)
    p = json.load(open(plan_path))
    p["stages"][1]["init"] = [{"weights": "@stage:2", "layers": ["conv1"]}]
    json.dump(p, open(plan_path, "w"))
    solver4 = tmp_path / "run" / "step4" / "solver.prototxt"
    solver4.write_text(solver4.read_text().replace("base_lr: 0.05", "base_lr: 0"))  # weights stay put
    out2, out4 = train.run_all(plan_path, progress=False)
    # the same stage without any init: what the fillers give
    p["stages"][1]["init"], p["stages"][1]["requires"] = [], []
    p["stages"][1]["snapshot_prefix"] = "snapshots/plain"
    p["stages"][1]["solver"] = "step4/plain_solver.prototxt"
    fx.write(str(tmp_path / "run" / "step4" / "plain_solver.prototxt"),
             solver4.read_text().replace('"snapshots/step4"', '"snapshots/plain"'))
    p["stages"][1]["output"] = "snapshots/plain_iter_1.caffemodel"
    plain_plan = fx.write(str(tmp_path / "run" / "plain.json"), json.dumps(p))
    plain = train.run_stage(plain_plan, 4, progress=False)

    import caffe
    deploy = str(tmp_path / "run" / "deploy.prototxt")
    nets = {k: caffe.Net(deploy, w, caffe.TEST) for k, w in (("2", out2), ("4", out4), ("plain", plain))}
    for blob in range(2):
        np.testing.assert_array_equal(nets["4"].params["conv1"][blob].data, nets["2"].params["conv1"][blob].data)
    for name in ("fc1", "fc2"):
        np.testing.assert_array_equal(nets["4"].params[name][0].data, nets["plain"].params[name][0].data)
        assert not np.allclose(nets["4"].params[name][0].data, nets["2"].params[name][0].data)
    # the per-stage init file held conv1 only, and is gone once Caffe read it
    log = open(plans.log_path(plans.load(plan_path), plans.load(plan_path)["stages"][1])).read()
    assert "-weights " + str(tmp_path / "run" / "init" / "step4.caffemodel") in log
    assert not (tmp_path / "run" / "init" / "step4.caffemodel").exists()


# --------------------------------------------------------------------------
LAYERS = ["caffe_io", "data", "graph", "methods", "runners", "experiments"]  # data flows this way
BASE = {"errors", "atomic", "values"}                                         # usable from anywhere


def _imports(path):
    """recon_dec modules a file imports (resolved relative imports)."""
    pkg = path.relative_to(REPO).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            if mod and mod[0] == "recon_dec":
                out.add(".".join(mod[:2]) if len(mod) > 1 else ".".join(mod + [node.names[0].name]))
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("recon_dec")}
    return out


def test_data_flows_one_way():
    """A folder imports only from itself, the folders before it in LAYERS,
    and the base modules: no cycles, no generic code reaching up."""
    for f in sorted((REPO / "recon_dec").rglob("*.py")):
        parts = f.relative_to(REPO / "recon_dec").parts
        if len(parts) == 1:
            continue  # cli.py registers every command; errors/atomic import nothing of ours
        own = parts[0]
        for imp in _imports(f):
            top = imp.split(".")[1]
            if top in BASE or top == own:
                continue
            assert top in LAYERS and own in LAYERS and LAYERS.index(top) < LAYERS.index(own), \
                f"{f.relative_to(REPO)} imports {imp}"
    # the generic layers name no particular method
    for folder in ("caffe_io", "graph", "runners"):
        for f in (REPO / "recon_dec" / folder).rglob("*.py"):
            assert "swwae" not in f.read_text().lower(), f
