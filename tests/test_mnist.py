"""The embedded MNIST digits load as real images with a fixed split."""
import numpy as np

from recon_dec.data import mnist


def test_load_shapes_and_values():
    images, labels = mnist.load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,)
    assert set(np.unique(labels)) == set(range(10))
    # real digits: mostly background, a bright stroke, roughly balanced classes
    assert 0.70 < np.mean(images == 0) < 0.90
    assert images.max() == 255
    assert np.bincount(labels).min() > 400
    padded = mnist.pad(images)
    assert padded.shape == (5000, 40, 40)
    np.testing.assert_array_equal(padded[:, 6:34, 6:34], images)
    assert padded[:, :6].max() == 0 and padded[:, 34:].max() == 0


def test_split_is_fixed_and_stratified():
    _, labels = mnist.load_mnist_5k()
    train, val = mnist.split(labels)
    train2, val2 = mnist.split(labels)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)
    assert len(val) == 1000 and len(train) == 4000
    assert len(np.intersect1d(train, val)) == 0
    assert np.all(np.bincount(labels[val]) == 100)
    # training order is shuffled: every batch of 64 holds several digits
    assert min(len(np.unique(labels[train[i:i + 64]])) for i in range(0, 4000, 64)) >= 5
