"""The autoencoder layers of caffe_ext (GaussianNoise, MaskingNoise,
KLSparsityLoss, PatchRemoval, MaskedEuclideanLoss) in a caffe.Net built from
a NetParameter, against numpy; and their LayerParameter field IDs."""
import numpy as np
import pytest
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2


def make_net(tmp_path, caffe, build, phase, shapes, force_backward=True):
    """A caffe.Net of Input layers named by `shapes` plus what build(n) adds."""
    n = caffe.NetSpec()
    for name, shape in shapes.items():
        setattr(n, name, L.Input(shape=dict(dim=list(shape))))
    build(n)
    proto = n.to_proto()
    assert isinstance(proto, caffe_pb2.NetParameter)
    proto.force_backward = force_backward
    path = tmp_path / "net.prototxt"
    path.write_text(str(proto))
    return caffe.Net(str(path), phase)


def test_field_ids():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    expected = {"unpooling_param": (149, "UnpoolingParameter"),
                "scale_jitter_data_param": (150, "ScaleJitterDataParameter"),
                "gaussian_noise_param": (151, "GaussianNoiseParameter"),
                "masking_noise_param": (152, "MaskingNoiseParameter"),
                "kl_sparsity_param": (153, "KLSparsityParameter"),
                "patch_removal_param": (154, "PatchRemovalParameter")}
    for name, (number, message) in expected.items():
        assert (fields[name].number, fields[name].message_type.name) == (number, message)
    # The IDs still free (reserved): test_ladder_layers_pycaffe.py checks the
    # whole table of caffe_ext/README.md against the proto.
    assert caffe_pb2.GaussianNoiseParameter().std == pytest.approx(0.3)
    assert caffe_pb2.MaskingNoiseParameter().ratio == pytest.approx(0.25)
    assert caffe_pb2.KLSparsityParameter().rho == pytest.approx(0.05)
    assert caffe_pb2.KLSparsityParameter().eps == pytest.approx(1e-6)
    patch = caffe_pb2.PatchRemovalParameter()
    assert (patch.mode, patch.fill) == (caffe_pb2.PatchRemovalParameter.CENTER, 0)


# --- GaussianNoise -----------------------------------------------------------

def noise_net(tmp_path, caffe, phase, shape, std):
    return make_net(tmp_path, caffe, lambda n: setattr(n, "noisy", L.GaussianNoise(
        n.data, gaussian_noise_param=dict(std=std))), phase, {"data": shape})


def test_gaussian_noise_train_statistics_stream_and_backward(tmp_path, caffe):
    shape = (4, 1, 125, 101)  # 50,500 values
    caffe.set_random_seed(11)  # the solver's random_seed fixes the key the layer draws at set-up
    net = noise_net(tmp_path, caffe, caffe.TRAIN, shape, 0.4)
    state = net.params["noisy"][0].data   # the stream: key (4 x 16 bits), counter (4 x 16 bits)
    assert state.shape == (8,) and list(state[4:]) == [0, 0, 0, 0]
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    net.blobs["data"].data[...] = x
    noise = net.forward()["noisy"] - net.blobs["data"].data
    assert abs(noise.mean()) < 0.01
    assert noise.std() == pytest.approx(0.4, abs=0.01)
    assert list(net.params["noisy"][0].data[4:]) == [1, 0, 0, 0]   # one TRAIN pass
    caffe.set_random_seed(11)  # the same key: the same noise
    again = noise_net(tmp_path, caffe, caffe.TRAIN, shape, 0.4)
    again.blobs["data"].data[...] = x
    np.testing.assert_array_equal(again.forward()["noisy"] - again.blobs["data"].data, noise)
    assert not np.array_equal(net.forward()["noisy"] - net.blobs["data"].data, noise)   # counter 1: new noise
    net.params["noisy"][0].data[4:] = 0   # rewound: the first pass's noise again
    np.testing.assert_array_equal(net.forward()["noisy"] - net.blobs["data"].data, noise)
    g = np.random.default_rng(1).standard_normal(shape)
    net.blobs["noisy"].diff[...] = g
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, g.astype(np.float32))
    np.testing.assert_array_equal(net.params["noisy"][0].diff, 0)


def test_gaussian_noise_test_phase_is_identity(tmp_path, caffe):
    net = noise_net(tmp_path, caffe, caffe.TEST, (2, 3, 4, 5), 0.4)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    net.blobs["data"].data[...] = x
    np.testing.assert_array_equal(net.forward()["noisy"], net.blobs["data"].data)


# --- MaskingNoise ------------------------------------------------------------

def masking_net(tmp_path, caffe, phase, shape, ratio):
    return make_net(tmp_path, caffe, lambda n: setattr(n, "masked", L.MaskingNoise(
        n.data, masking_noise_param=dict(ratio=ratio))), phase, {"data": shape})


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_masking_noise_drops_ratio_without_rescaling(tmp_path, caffe, ratio):
    shape = (10, 1, 100, 100)
    net = masking_net(tmp_path, caffe, caffe.TRAIN, shape, ratio)
    x = np.random.default_rng(0).uniform(0.5, 1.5, shape)  # never 0
    net.blobs["data"].data[...] = x
    out = net.forward()["masked"].copy()
    kept = out != 0
    assert 1 - kept.mean() == pytest.approx(ratio, abs=0.01)
    np.testing.assert_array_equal(out[kept], net.blobs["data"].data[kept])  # not scaled
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    net.blobs["masked"].diff[...] = g
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, np.where(kept, g, 0))
    np.testing.assert_array_equal(net.params["masked"][0].diff, 0)   # its stream's state: not learned
    assert list(net.params["masked"][0].data[4:]) == [1, 0, 0, 0]   # counter: one TRAIN pass
    net.params["masked"][0].data[4:] = 0   # rewound: the same mask again
    np.testing.assert_array_equal(net.forward()["masked"], out)


def test_masking_noise_test_phase_is_identity(tmp_path, caffe):
    net = masking_net(tmp_path, caffe, caffe.TEST, (2, 3, 4, 5), 0.5)
    net.blobs["data"].data[...] = np.random.default_rng(0).uniform(1, 2, (2, 3, 4, 5))
    np.testing.assert_array_equal(net.forward()["masked"], net.blobs["data"].data)


# --- KLSparsityLoss ----------------------------------------------------------

def kl_reference(a, rho, eps=1e-6):
    a = a.reshape(len(a), -1).astype(np.float64)
    r = np.clip(a.mean(axis=0), eps, 1 - eps)
    loss = np.sum(rho * np.log(rho / r) + (1 - rho) * np.log((1 - rho) / (1 - r)))
    grad = np.broadcast_to((-rho / r + (1 - rho) / (1 - r)) / len(a), a.shape)
    return loss, grad


def test_kl_sparsity_loss_value_and_gradient(tmp_path, caffe):
    shape, rho, beta = (16, 5, 2, 2), 0.1, 3.0
    net = make_net(tmp_path, caffe, lambda n: setattr(n, "kl", L.KLSparsityLoss(
        n.code, kl_sparsity_param=dict(rho=rho), loss_weight=beta)),
        caffe.TRAIN, {"code": shape})
    a = np.random.default_rng(0).uniform(0.05, 0.95, shape)
    net.blobs["code"].data[...] = a
    loss = float(net.forward()["kl"])
    expected_loss, expected_grad = kl_reference(net.blobs["code"].data, rho)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    net.backward()  # the loss weight beta is the top diff
    np.testing.assert_allclose(net.blobs["code"].diff.reshape(16, -1), beta * expected_grad,
                               rtol=1e-5, atol=1e-7)


def test_kl_sparsity_loss_behind_a_sigmoid_code(tmp_path, caffe):
    """InnerProduct -> Sigmoid -> KLSparsityLoss: the net's gradient of the
    input matches central differences of the net's loss."""
    def build(n):
        n.fc = L.InnerProduct(n.x, num_output=6, weight_filler=dict(type="gaussian", std=0.5))
        n.code = L.Sigmoid(n.fc)
        n.kl = L.KLSparsityLoss(n.code, kl_sparsity_param=dict(rho=0.05), loss_weight=2)
    caffe.set_random_seed(3)
    net = make_net(tmp_path, caffe, build, caffe.TRAIN, {"x": (8, 4)})
    x = np.random.default_rng(2).standard_normal((8, 4))
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    analytic = net.blobs["x"].diff.copy()

    def loss_at(v):
        net.blobs["x"].data[...] = v
        return 2 * float(net.forward()["kl"])
    h = 1e-2
    for i, j in [(0, 0), (3, 1), (7, 3)]:
        up, down = x.copy(), x.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (loss_at(up) - loss_at(down)) / (2 * h)
        assert analytic[i, j] == pytest.approx(numeric, rel=2e-2, abs=1e-4)


# --- PatchRemoval and MaskedEuclideanLoss ------------------------------------

def patch_net(tmp_path, caffe, phase, shape, size, mode, fill=0.0):
    def build(n):
        n.holed, n.mask = L.PatchRemoval(n.data, ntop=2, patch_removal_param=dict(
            size=size, mode=getattr(P.PatchRemoval, mode), fill=fill))
    return make_net(tmp_path, caffe, build, phase, {"data": shape})


def square_mask(h, w, y, x, size):
    m = np.zeros((h, w))
    m[y:y + size, x:x + size] = 1
    return m


@pytest.mark.parametrize("phase,mode", [("TRAIN", "CENTER"), ("TEST", "RANDOM")])
def test_patch_removal_centre(tmp_path, caffe, phase, mode):
    shape, size = (2, 3, 9, 12), 4
    net = patch_net(tmp_path, caffe, getattr(caffe, phase), shape, size, mode, fill=-2)
    x = np.random.default_rng(0).uniform(0, 1, shape)
    net.blobs["data"].data[...] = x
    net.forward()
    m = square_mask(9, 12, (9 - 4) // 2, (12 - 4) // 2, 4)
    np.testing.assert_array_equal(net.blobs["mask"].data, np.broadcast_to(m, (2, 1, 9, 12)))
    x32 = net.blobs["data"].data
    np.testing.assert_array_equal(net.blobs["holed"].data, np.where(m == 1, -2, x32))


def test_patch_removal_random_positions_and_gradient(tmp_path, caffe):
    shape, size = (60, 2, 7, 10), 3
    net = patch_net(tmp_path, caffe, caffe.TRAIN, shape, size, "RANDOM")
    x = np.random.default_rng(0).uniform(1, 2, shape)
    net.blobs["data"].data[...] = x
    net.forward()
    mask = net.blobs["mask"].data[:, 0]
    corners = set()
    for k in range(shape[0]):
        ys, xs = np.nonzero(mask[k])
        y, x0 = ys.min(), xs.min()
        np.testing.assert_array_equal(mask[k], square_mask(7, 10, y, x0, size))
        corners.add((y, x0))
    assert len(corners) > 20  # 5 x 8 possible corners, drawn per image
    holed = net.blobs["holed"].data
    np.testing.assert_array_equal(holed, np.where(mask[:, None] == 1, 0, net.blobs["data"].data))
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    net.blobs["holed"].diff[...] = g
    net._backward(list(net._layer_names).index("holed"), 0)
    np.testing.assert_array_equal(net.blobs["data"].diff, np.where(mask[:, None] == 1, 0, g))


@pytest.mark.parametrize("normalization,denominator", [
    (None, lambda n, m, c: n),                       # BATCH_SIZE, as EuclideanLoss
    ("VALID", lambda n, m, c: m.sum() * c),          # the masked values
    ("FULL", lambda n, m, c: n * c * m[0].size)])
def test_masked_euclidean_loss_on_the_patch(tmp_path, caffe, normalization, denominator):
    shape = (3, 2, 8, 8)

    def build(n):
        n.holed, n.mask = L.PatchRemoval(n.data, ntop=2, patch_removal_param=dict(
            size=4, mode=P.PatchRemoval.RANDOM))
        kwargs = {}
        if normalization:
            kwargs["loss_param"] = dict(normalization=getattr(P.Loss, normalization))
        n.loss = L.MaskedEuclideanLoss(n.recon, n.data, n.mask, **kwargs)
    net = make_net(tmp_path, caffe, build, caffe.TRAIN, {"data": shape, "recon": shape})
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.uniform(0, 1, shape)
    net.blobs["recon"].data[...] = rng.uniform(0, 1, shape)
    loss = float(net.forward()["loss"])
    m = net.blobs["mask"].data.astype(np.float64)
    assert m.sum() == 3 * 16
    d = net.blobs["recon"].data.astype(np.float64) - net.blobs["data"].data
    z = denominator(3, m, 2)
    assert loss == pytest.approx(np.sum(m * d ** 2) / (2 * z), rel=1e-5)
    net._backward(list(net._layer_names).index("loss"), list(net._layer_names).index("loss"))
    np.testing.assert_allclose(net.blobs["recon"].diff, m * d / z, rtol=1e-5, atol=1e-7)
