"""caffe_ext's EntropyLoss layer in a caffe.Net against numpy: the mean over
rows of -sum p log p, p = softmax(logits), and its gradient."""
import numpy as np
import pytest
from caffe import layers as L


def entropy_net(tmp_path, caffe, shape, **layer):
    n = caffe.NetSpec()
    n.logits = L.Input(shape=dict(dim=list(shape)))
    n.entropy = L.EntropyLoss(n.logits, **layer)
    proto = n.to_proto()
    proto.force_backward = True  # the Input's diff
    path = tmp_path / "net.prototxt"
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TRAIN)


def reference(z, axis=1):
    """Mean entropy over the rows of softmax along `axis` and its gradient."""
    log_p = z - z.max(axis, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis, keepdims=True))
    p = np.exp(log_p)
    h = -(p * log_p).sum(axis, keepdims=True)
    rows = z.size // z.shape[axis]
    return h.sum() / rows, -p * (log_p + h) / rows


def test_reference_gradient_is_the_derivative():
    z = np.random.default_rng(0).normal(0, 2, (5, 10))
    loss, grad = reference(z)
    eps = 1e-6
    numeric = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        d = np.zeros_like(z)
        d[idx] = eps
        numeric[idx] = (reference(z + d)[0] - reference(z - d)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-8)
    assert 0 < loss < np.log(10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradient_match_numpy(tmp_path, caffe, seed):
    z = np.random.default_rng(seed).normal(0, 3, (5, 10)).astype(np.float32)
    net = entropy_net(tmp_path, caffe, z.shape)
    net.blobs["logits"].data[...] = z
    loss = net.forward()["entropy"]
    net.backward()
    want_loss, want_grad = reference(z.astype(np.float64))
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(net.blobs["logits"].diff, want_grad, rtol=1e-4, atol=1e-7)


def test_spatial_rows_and_loss_weight(tmp_path, caffe):
    shape = (2, 4, 3, 5)  # rows: 2 * 3 * 5, classes along axis 1
    z = np.random.default_rng(3).normal(0, 2, shape).astype(np.float32)
    net = entropy_net(tmp_path, caffe, shape, loss_weight=0.5)
    net.blobs["logits"].data[...] = z
    loss = net.forward()["entropy"]
    net.backward()
    want_loss, want_grad = reference(z.astype(np.float64))
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)  # the top: unweighted
    np.testing.assert_allclose(net.blobs["logits"].diff, 0.5 * want_grad,
                               rtol=1e-4, atol=1e-7)


def test_saturated_logits_are_finite(tmp_path, caffe):
    z = np.full((5, 10), -1000, np.float32)
    z[np.arange(5), np.arange(5)] = 1000
    net = entropy_net(tmp_path, caffe, z.shape)
    net.blobs["logits"].data[...] = z
    assert float(net.forward()["entropy"]) == 0
    net.backward()
    assert np.isfinite(net.blobs["logits"].diff).all()
    np.testing.assert_array_equal(net.blobs["logits"].diff, 0)
