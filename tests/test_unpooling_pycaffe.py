"""The Unpooling layer through pycaffe's caffe.Net, against a numpy reference."""
import numpy as np
import pytest
from caffe import layers as L, params as P


def reference_unpool(values, switches, out_hw, kernel, stride, pad, average=True):
    """Scatter each value to its switch (or to the fixed kernel/2 cell when
    switches is None); locations reached several times get the mean."""
    n, c, ph, pw = values.shape
    h, w = out_hw
    out = np.zeros((n, c, h * w))
    count = np.zeros((n, c, h * w))
    for i in range(ph):
        for j in range(pw):
            if switches is None:
                y, x = i * stride - pad + kernel // 2, j * stride - pad + kernel // 2
                if not (0 <= y < h and 0 <= x < w):
                    continue
                idx = np.full((n, c), y * w + x)
            else:
                idx = switches[:, :, i, j].astype(int)
            for a in range(n):
                for b in range(c):
                    out[a, b, idx[a, b]] += values[a, b, i, j]
                    count[a, b, idx[a, b]] += 1
    if average:
        out = np.where(count > 0, out / np.maximum(count, 1), 0)
    return out.reshape(n, c, h, w), count.reshape(n, c, h, w)


def unpool_net(tmp_path, caffe, shape, kernel, stride, pad=0, known=True, overlap="AVERAGE"):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    pool = dict(pool=P.Pooling.MAX, kernel_size=kernel, stride=stride, pad=pad)
    n.pooled, n.mask = L.Pooling(n.data, pooling_param=pool, ntop=2)
    unpool = dict(overlap=getattr(P.Unpooling, overlap))
    bottoms = [n.pooled, n.mask, n.data] if known else [n.pooled, n.data]
    if not known:
        unpool["switches"] = P.Unpooling.FIXED
    n.unpooled, n.count = L.Unpooling(*bottoms, pooling_param=pool,
                                      unpooling_param=unpool, ntop=2)
    n.repooled = L.Pooling(n.unpooled, pooling_param=pool)
    proto = n.to_proto()
    proto.force_backward = True  # no loss layer: backward only when forced
    path = tmp_path / "net.prototxt"
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TEST)


CASES = [  # input shape, kernel, stride, pad
    ((2, 3, 8, 8), 2, 2, 0),     # VGG
    ((2, 3, 7, 9), 2, 2, 0),     # odd sizes, ceil-mode pooling
    ((2, 3, 13, 13), 3, 2, 0),   # AlexNet, overlapping
    ((1, 2, 9, 8), 3, 2, 1),     # padding
]


@pytest.mark.parametrize("shape,kernel,stride,pad", CASES)
@pytest.mark.parametrize("known", [True, False])
def test_forward_backward_match_reference(tmp_path, caffe, shape, kernel, stride, pad, known):
    net = unpool_net(tmp_path, caffe, shape, kernel, stride, pad, known)
    rng = np.random.default_rng(7)
    net.blobs["data"].data[...] = rng.uniform(0, 1, shape)
    net.forward()
    values, mask = net.blobs["pooled"].data, net.blobs["mask"].data
    expected, count = reference_unpool(values, mask if known else None, shape[2:], kernel, stride, pad)
    np.testing.assert_allclose(net.blobs["unpooled"].data, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(net.blobs["count"].data, count)
    assert net.blobs["unpooled"].data.shape == shape

    # backward is the transpose: <unpool(v), g> == <v, unpool^T(g)>
    g = rng.standard_normal(shape).astype(np.float32)
    net.blobs["unpooled"].diff[...] = g
    net._backward(list(net._layer_names).index("unpooled"), 0)
    lhs = float(np.sum(net.blobs["unpooled"].data * g))
    rhs = float(np.sum(values * net.blobs["pooled"].diff))
    assert lhs == pytest.approx(rhs, rel=1e-5)


@pytest.mark.parametrize("shape,kernel,stride,pad", CASES)
def test_round_trip_known_switches(tmp_path, caffe, shape, kernel, stride, pad):
    """Pooling -> Unpooling(known) -> Pooling gives the pooled values back
    exactly for non-negative input, as after a ReLU."""
    net = unpool_net(tmp_path, caffe, shape, kernel, stride, pad, known=True)
    net.blobs["data"].data[...] = np.random.default_rng(3).uniform(0, 1, shape)
    net.forward()
    np.testing.assert_array_equal(net.blobs["repooled"].data, net.blobs["pooled"].data)


def test_sum_mode_adds_colliding_values(tmp_path, caffe):
    shape = (1, 1, 5, 5)
    avg = unpool_net(tmp_path, caffe, shape, 3, 2, overlap="AVERAGE")
    total = unpool_net(tmp_path, caffe, shape, 3, 2, overlap="SUM")
    x = np.zeros(shape, np.float32)
    x[0, 0, 2, 2] = 5.0  # the max of all four 3x3/2 windows
    for net in (avg, total):
        net.blobs["data"].data[...] = x
        net.forward()
    assert avg.blobs["unpooled"].data[0, 0, 2, 2] == 5.0
    assert total.blobs["unpooled"].data[0, 0, 2, 2] == 20.0
    assert total.blobs["count"].data[0, 0, 2, 2] == 4
