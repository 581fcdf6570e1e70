"""caffe_ext's ladder-network layers (LadderCombinator, BatchStats, Normalize)
in a caffe.Net against numpy: the combinator's forward and gradients, BatchStats
+ Normalize = batch normalisation (and Caffe's BatchNorm), running statistics,
normalising with another blob's statistics; their LayerParameter field IDs."""
import re

import numpy as np
import pytest
from caffe import layers as L
from caffe.proto import caffe_pb2

from conftest import REPO


def make_net(tmp_path, caffe, build, shapes, phase=None, name="net", force_backward=True):
    """A caffe.Net of Input layers named by `shapes` plus what build(n) adds."""
    n = caffe.NetSpec()
    for blob, shape in shapes.items():
        setattr(n, blob, L.Input(shape=dict(dim=list(shape))))
    build(n)
    proto = n.to_proto()
    proto.force_backward = force_backward
    path = tmp_path / f"{name}.prototxt"
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TRAIN if phase is None else phase)


def test_field_ids_and_readme_table():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    expected = {"ladder_combinator_param": (155, "LadderCombinatorParameter"),
                "batch_stats_param": (156, "BatchStatsParameter"),
                "normalize_param": (157, "NormalizeParameter")}
    for name, (number, message) in expected.items():
        assert (fields[name].number, fields[name].message_type.name) == (number, message)
    # caffe_ext/README.md's ID table is the proto's: every row, and the next free ID.
    readme = (REPO / "caffe_ext/README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| `(\w+)` \|", readme, re.M)
    assert len(rows) >= 9
    for number, field, message in rows:
        assert (fields[field].number, fields[field].message_type.name) == (int(number), message)
    next_free = int(re.search(r"next free: (\d+)\*\*", readme).group(1))
    taken = {f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
    assert {int(r[0]) for r in rows} == set(range(149, next_free)) <= taken
    assert not taken & set(range(next_free, 180))
    p = caffe_pb2.LadderCombinatorParameter()
    assert (p.axis, p.num_axes) == (1, -1)
    s = caffe_pb2.BatchStatsParameter()
    assert (s.unbiased, s.HasField("use_global_stats")) == (False, False)
    assert s.moving_average_fraction == pytest.approx(0.999)
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)


# ---- LadderCombinator ----------------------------------------------------

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def combinator(z, u, a):
    """z^ and the gradients of sum(g * z^) as functions of g: a is (10, *P)
    with P broadcasting against z's shape."""
    s1, s2 = sigmoid(a[1] * u + a[2]), sigmoid(a[6] * u + a[7])
    mu = a[0] * s1 + a[3] * u + a[4]
    v = a[5] * s2 + a[8] * u + a[9]
    out = (z - mu) * v + mu

    def grads(g):
        gm, gv = g * (1 - v), g * (z - mu)
        t1, t2 = a[0] * s1 * (1 - s1), a[5] * s2 * (1 - s2)
        dz = g * v
        du = gm * (t1 * a[1] + a[3]) + gv * (t2 * a[6] + a[8])
        terms = [gm * s1, gm * t1 * u, gm * t1, gm * u, gm,
                 gv * s2, gv * t2 * u, gv * t2, gv * u, gv]
        return dz, du, terms
    return out, grads


def test_combinator_reference_gradient_is_the_derivative():
    rng = np.random.default_rng(0)
    z, u, g = rng.normal(size=(3, 4, 5))
    a = rng.normal(size=(10, 5))
    out, grads = combinator(z, u, a)
    dz, du, terms = grads(g)
    da = np.array([t.sum(0) for t in terms])
    eps = 1e-6

    def numeric(x, f):
        d = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            e = np.zeros_like(x)
            e[idx] = eps
            d[idx] = ((f(x + e) * g).sum() - (f(x - e) * g).sum()) / (2 * eps)
        return d
    np.testing.assert_allclose(dz, numeric(z, lambda x: combinator(x, u, a)[0]), atol=1e-7)
    np.testing.assert_allclose(du, numeric(u, lambda x: combinator(z, x, a)[0]), atol=1e-7)
    np.testing.assert_allclose(da, numeric(a, lambda x: combinator(z, u, x)[0]), atol=1e-7)


@pytest.mark.parametrize("shape,num_axes", [((6, 5), -1), ((3, 4, 2, 3), -1),
                                            ((3, 4, 2, 3), 1)])
def test_combinator_matches_numpy(tmp_path, caffe, shape, num_axes):
    rng = np.random.default_rng(sum(shape) + num_axes)
    net = make_net(tmp_path, caffe, lambda n: setattr(n, "zhat", L.LadderCombinator(
        n.z, n.u, ladder_combinator_param=dict(num_axes=num_axes))),
        {"z": shape, "u": shape})
    params = net.params["zhat"]
    pshape = shape[1:] if num_axes == -1 else shape[1:2]
    assert len(params) == 10 and all(p.data.shape == pshape for p in params)
    init = np.array([p.data.copy() for p in params])
    want_init = np.zeros((10,) + pshape)
    want_init[[1, 6]] = 1  # a2 = a7 = 1
    np.testing.assert_array_equal(init, want_init)

    z, u, g = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    a = rng.normal(size=(10,) + pshape).astype(np.float32)
    for k in range(10):
        params[k].data[...] = a[k]
    net.blobs["z"].data[...] = z
    net.blobs["u"].data[...] = u
    out = net.forward()["zhat"]
    net.clear_param_diffs()
    net.backward(zhat=g)
    # the parameters broadcast along the batch axis and, per channel, H x W
    a_b = a.reshape((10, 1) + pshape + (1,) * (len(shape) - 1 - len(pshape)))
    want, grads = combinator(*(x.astype(np.float64) for x in (z, u, a_b)))
    dz, du, terms = grads(g.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["z"].diff, dz, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["u"].diff, du, rtol=1e-4, atol=1e-5)
    sum_axes = (0,) + tuple(range(1 + len(pshape), len(shape)))
    for k in range(10):
        np.testing.assert_allclose(params[k].diff, terms[k].sum(sum_axes),
                                   rtol=1e-4, atol=1e-4, err_msg=f"a{k + 1}")


def test_combinator_default_init_gives_zero(tmp_path, caffe):
    net = make_net(tmp_path, caffe, lambda n: setattr(n, "zhat", L.LadderCombinator(n.z, n.u)),
                   {"z": (4, 3), "u": (4, 3)})
    net.blobs["z"].data[...] = np.random.default_rng(1).normal(size=(4, 3))
    net.blobs["u"].data[...] = np.random.default_rng(2).normal(size=(4, 3))
    np.testing.assert_array_equal(net.forward()["zhat"], 0)


# ---- BatchStats + Normalize ----------------------------------------------

def batch_norm(x, dy, eps):
    """Batch normalisation per channel (axis 1) with biased variance, and the
    gradient to x of sum(dy * y)."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    r = 1 / np.sqrt(var + eps)
    y = (x - mean) * r
    dx = r * (dy - dy.mean(axes, keepdims=True) - y * (dy * y).mean(axes, keepdims=True))
    return y, dx, mean.ravel(), var.ravel()


def stats_norm(n, eps, **stats):
    n.mean, n.var = L.BatchStats(n.x, ntop=2, **stats)
    n.y = L.Normalize(n.x, n.mean, n.var, normalize_param=dict(eps=eps))


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 2, 3)])
def test_batch_stats_plus_normalize_is_batch_norm(tmp_path, caffe, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(2, 3, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    net = make_net(tmp_path, caffe, lambda n: stats_norm(n, 1e-5), {"x": shape})
    net.blobs["x"].data[...] = x
    out = net.forward(blobs=["mean", "var"])
    net.backward(y=dy)
    want_y, want_dx, want_mean, want_var = batch_norm(x.astype(np.float64), dy, 1e-5)
    np.testing.assert_allclose(out["y"], want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["mean"], want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["var"], want_var, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["x"].diff, want_dx, rtol=1e-3, atol=1e-4)

    # and Caffe's own BatchNorm in TRAIN, same eps, same x and top diff
    bn = make_net(tmp_path, caffe, lambda n: setattr(n, "y", L.BatchNorm(
        n.x, batch_norm_param=dict(eps=1e-5))), {"x": shape}, name="bn")
    bn.blobs["x"].data[...] = x
    np.testing.assert_allclose(bn.forward()["y"], out["y"], rtol=1e-4, atol=1e-5)
    bn.backward(y=dy)
    np.testing.assert_allclose(net.blobs["x"].diff, bn.blobs["x"].diff, rtol=1e-3, atol=1e-5)


def test_unbiased_variance(tmp_path, caffe):
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    net = make_net(tmp_path, caffe, lambda n: stats_norm(
        n, 1e-10, batch_stats_param=dict(unbiased=True)), {"x": x.shape})
    net.blobs["x"].data[...] = x
    out = net.forward(blobs=["var"])
    np.testing.assert_allclose(out["var"], x.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(out["y"], (x - x.mean(0)) / x.std(0, ddof=1), rtol=1e-4, atol=1e-5)


def test_running_statistics(tmp_path, caffe):
    """TRAIN: the blobs are BatchNorm's moving sums (f = 0.5), unbiased variance;
    a TEST net normalises with sums / weight."""
    rng = np.random.default_rng(4)
    shape = (5, 3, 2, 2)
    batches = [rng.normal(k, 1 + k, shape).astype(np.float32) for k in range(3)]
    stats = dict(batch_stats_param=dict(moving_average_fraction=0.5))
    net = make_net(tmp_path, caffe, lambda n: stats_norm(n, 1e-10, **stats), {"x": shape})
    sums, weight = np.zeros((2, 3)), 0.0
    for x in batches:
        net.blobs["x"].data[...] = x
        net.forward()
        axes = (0, 2, 3)
        sums = 0.5 * sums + [x.mean(axes), x.var(axes, ddof=1)]
        weight = 0.5 * weight + 1
    blobs = net.params["mean"]
    np.testing.assert_allclose(blobs[0].data, sums[0], rtol=1e-5)
    np.testing.assert_allclose(blobs[1].data, sums[1], rtol=1e-5)
    assert blobs[2].data[0] == pytest.approx(weight)

    test = make_net(tmp_path, caffe, lambda n: stats_norm(n, 1e-10), {"x": shape},
                    phase=caffe.TEST, name="test")
    test.share_with(net)  # by layer name, as a solver's test net
    x = batches[0]
    test.blobs["x"].data[...] = x
    out = test.forward(blobs=["mean", "var"])
    mean, var = sums / weight
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(out["var"], var, rtol=1e-5)
    np.testing.assert_allclose(out["y"], (x - mean[:, None, None]) / np.sqrt(var[:, None, None]),
                               rtol=1e-4, atol=1e-4)
    assert blobs[2].data[0] == pytest.approx(weight)  # TEST does not update


def test_normalize_with_another_blobs_statistics(tmp_path, caffe):
    """The ladder's z^_BN: z normalised with x's batch mean and variance, no
    gradient through the statistics (propagate_down false on them). x and z
    come through learned biases (0) so that both need a gradient; no
    force_backward, which in Caffe overrides propagate_down: false; y is a loss
    (weight 1: dy = 1) so that the backward pass reaches it."""
    rng = np.random.default_rng(5)
    shape = (7, 4)
    x = rng.normal(1, 2, shape).astype(np.float32)
    z = rng.normal(size=shape).astype(np.float32)
    dy = np.ones(shape)

    def build(n):
        n.x = L.Bias(n.x0, bias_param=dict(num_axes=1))
        n.z = L.Bias(n.z0, bias_param=dict(num_axes=1))
        n.mean, n.var = L.BatchStats(n.x, ntop=2)
        n.y = L.Normalize(n.z, n.mean, n.var, propagate_down=[True, False, False],
                          loss_weight=1)
        n.silence = L.Silence(n.x, ntop=0)  # x also used elsewhere, as in a ladder
    net = make_net(tmp_path, caffe, build, {"x0": shape, "z0": shape},
                   force_backward=False)
    net.blobs["x0"].data[...] = x
    net.blobs["z0"].data[...] = z
    out = net.forward()
    net.clear_param_diffs()
    net.backward()
    r = 1 / np.sqrt(x.var(0).astype(np.float64) + 1e-10)
    np.testing.assert_allclose(out["y"], (z - x.mean(0)) * r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["z"].diff, dy * r, rtol=1e-5)
    np.testing.assert_allclose(net.params["z"][0].diff, (dy * r).sum(0), rtol=1e-5)
    np.testing.assert_array_equal(net.params["x"][0].diff, 0)  # nothing through the stats


def test_normalize_gradient_to_statistics(tmp_path, caffe):
    """Gradients to mean and var of Normalize alone (stats as inputs)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 3, 2)).astype(np.float32)
    mean = rng.normal(size=3).astype(np.float32)
    var = rng.uniform(0.5, 2, 3).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    net = make_net(tmp_path, caffe, lambda n: setattr(n, "y", L.Normalize(n.x, n.m, n.v)),
                   {"x": x.shape, "m": (3,), "v": (3,)})
    for name, value in (("x", x), ("m", mean), ("v", var)):
        net.blobs[name].data[...] = value
    y = net.forward()["y"].astype(np.float64)
    net.backward(y=dy)
    r = 1 / np.sqrt(var.astype(np.float64) + 1e-10)[:, None]
    np.testing.assert_allclose(y, (x - mean[:, None]) * r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["m"].diff, -(r * dy).sum((0, 2)), rtol=1e-4)
    np.testing.assert_allclose(net.blobs["v"].diff, -0.5 * (r ** 2 * dy * y).sum((0, 2)),
                               rtol=1e-4)
