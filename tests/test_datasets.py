"""recon_dec.data.idx (our IDX reader), recon_dec.data.datasets (mnist5k,
Fashion-MNIST from Debian's dataset-fashion-mnist, user IDX files) and the
semi-supervised split LMDBs, read back by Caffe's own Data layer."""
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from recon_dec import cli
from recon_dec.data import datasets, idx, store
from recon_dec.errors import ReconDecError

PY = sys.executable


def _images_labels(n=30, h=5, w=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _one_line_error(fn, match):
    with pytest.raises(ReconDecError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


@pytest.fixture(scope="module")
def fashion():
    return datasets.load("fashion-mnist")


@pytest.fixture(scope="module")
def mnist5k():
    return datasets.load("mnist5k")


# --------------------------------------------------------------------------
# IDX
def test_idx_round_trip_plain_and_gzip(tmp_path):
    x, y = _images_labels()
    for suffix in ("", ".gz"):
        xi, yi = tmp_path / f"x.idx{suffix}", tmp_path / f"y.idx{suffix}"
        idx.write_idx(xi, x)
        idx.write_idx(yi, y)
        raw = xi.read_bytes()
        if suffix:
            assert raw[:2] == b"\x1f\x8b"
            raw = gzip.decompress(raw)
        assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (30, 5, 7)
        assert len(raw) == 16 + x.size
        got_x, got_y = idx.read_pair(xi, yi)
        assert got_x.dtype == np.uint8 and got_x.shape == (30, 5, 7)
        assert got_y.dtype == np.int64
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        assert idx.read_labels(yi).dtype == np.uint8
    # gzip is recognised by content, not by name; compression is deterministic
    (tmp_path / "z.bin").write_bytes((tmp_path / "x.idx.gz").read_bytes())
    np.testing.assert_array_equal(idx.read_images(tmp_path / "z.bin"), x)
    idx.write_idx(tmp_path / "again.gz", x)
    assert (tmp_path / "again.gz").read_bytes() == (tmp_path / "x.idx.gz").read_bytes()


def test_idx_corrupt_truncated_and_mismatched_files(tmp_path):
    x, y = _images_labels()
    good = idx.encode_idx(x)
    cases = {
        "magic.idx": (b"\x01\x02" + good[2:], "not an IDX file (magic 0x01020803"),
        "float.idx": (good[:2] + b"\x0d" + good[3:], "type code 0x0d (float)"),
        "short.idx": (good[:-1], "truncated: header declares shape 30x5x7 = 1066 bytes, the file has 1065"),
        "long.idx": (good + b"\x00", "trailing bytes"),
        "header.idx": (good[:9], "truncated IDX header (9 bytes, need 16)"),
        "empty.idx": (b"", "shorter than the header"),
        "cut.gz": (gzip.compress(good)[:-20], "corrupt gzip stream (truncated)"),
        "crc.gz": (gzip.compress(good)[:-8] + b"\xff" * 8, "corrupt gzip stream"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        msg = _one_line_error(lambda: idx.read_images(path), match)
        assert msg.startswith(f"{path}: ")
    idx.write_idx(tmp_path / "x.idx", x)
    idx.write_idx(tmp_path / "y.idx", y[:29])
    _one_line_error(lambda: idx.read_labels(tmp_path / "x.idx"),
                    f"{tmp_path}/x.idx: IDX file has 3 dimension(s) (magic 0x00000803), "
                    "expected labels (0x00000801)")
    _one_line_error(lambda: idx.read_pair(tmp_path / "x.idx", tmp_path / "y.idx"),
                    f"{tmp_path}/y.idx: 29 labels, but {tmp_path}/x.idx holds 30 images")
    _one_line_error(lambda: idx.read_images(tmp_path / "nope.idx"),
                    f"{tmp_path}/nope.idx: cannot read the IDX file (No such file or directory)")


# --------------------------------------------------------------------------
# data sets
def test_fashion_mnist_from_debian_package(fashion):
    assert fashion.train_images.shape == (60000, 28, 28) and fashion.train_images.dtype == np.uint8
    assert fashion.test_images.shape == (10000, 28, 28)
    assert fashion.num_classes == 10 and fashion.image_shape == (1, 28, 28)
    assert np.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    # the published facts: the first image of each set is an ankle boot (9);
    # the training mean is the well-known 0.2860 normalisation constant
    assert fashion.train_labels[0] == 9 and fashion.test_labels[0] == 9
    assert abs(fashion.train_images.mean() / 255 - 0.2860) < 5e-5


def test_mnist5k_and_user_idx_and_missing_package(tmp_path, mnist5k):
    assert mnist5k.train_images.shape == (4000, 28, 28) and mnist5k.test_images.shape == (1000, 28, 28)
    assert np.bincount(mnist5k.train_labels).tolist() == [400] * 10
    assert np.bincount(mnist5k.test_labels).tolist() == [100] * 10
    # our own IDX files of the same digits load as the same data set
    names = ["tx.gz", "ty.gz", "vx", "vy"]
    for name, a in zip(names, (mnist5k.train_images, mnist5k.train_labels.astype(np.uint8),
                               mnist5k.test_images, mnist5k.test_labels.astype(np.uint8))):
        idx.write_idx(tmp_path / name, a)
    user = datasets.load("idx:" + ",".join(str(tmp_path / n) for n in names))
    assert user.sha256() == mnist5k.sha256()
    assert user.name.startswith("idx:/")
    _one_line_error(lambda: datasets.load("fashion-mnist", fashion_dir=str(tmp_path / "none")),
                    f"{tmp_path}/none/train-images-idx3-ubyte.gz: missing; Fashion-MNIST comes "
                    "from Debian's package dataset-fashion-mnist")
    _one_line_error(lambda: datasets.load("idx:a,b"), "expected idx:TRAIN_IMAGES,TRAIN_LABELS")
    _one_line_error(lambda: datasets.load("cifar"), "--dataset 'cifar': unknown data set")


# --------------------------------------------------------------------------
# semi-supervised splits
def _entries(db):
    """(images (N, H, W), labels) decoded from an LMDB of raw Datums."""
    xs, ys = [], []
    for _, v in store.iter_lmdb(db):
        img, lab = store.decode_value(v)
        xs.append(img)
        ys.append(lab)
    return np.array(xs), np.array(ys)


def _digests(images):
    return sorted(hashlib.sha256(a.tobytes()).hexdigest() for a in images)


def test_semi_split_contents(tmp_path, mnist5k):
    split = datasets.write_semi_supervised(mnist5k, 100, seed=3, out=tmp_path / "s", val=500)
    info = json.loads(open(split.manifest).read())
    assert info == split.info
    assert info["counts"] == {"train": 4000, "labeled": 100, "unlabeled": 3500, "test": 1000, "val": 500}
    assert info["image_shape"] == [1, 28, 28] and info["seed"] == 3
    assert info["label_histogram"]["labeled"] == {str(c): 10 for c in range(10)}
    lab_idx, val_idx = np.array(info["labeled_indices"]), np.array(info["val_indices"])
    # labeled: 10 of each class, the training images at the recorded indices, in that order
    x, y = _entries(split.labeled)
    assert np.bincount(y).tolist() == [10] * 10
    np.testing.assert_array_equal(x, mnist5k.train_images[lab_idx])
    np.testing.assert_array_equal(y, mnist5k.train_labels[lab_idx])
    assert len(set(lab_idx)) == 100 and lab_idx.max() < 4000
    # val: held out before the labels were drawn, with labels, in no other LMDB
    assert not set(val_idx) & set(lab_idx) and len(set(val_idx)) == 500
    vx, vy = _entries(split.val)
    np.testing.assert_array_equal(vx, mnist5k.train_images[val_idx])
    np.testing.assert_array_equal(vy, mnist5k.train_labels[val_idx])
    # unlabeled: every training image but val (labeled ones included), all labels -1, shuffled
    ux, uy = _entries(split.unlabeled)
    assert set(uy.tolist()) == {-1}
    rest = np.setdiff1d(np.arange(4000), val_idx)
    assert _digests(ux) == _digests(mnist5k.train_images[rest])
    assert not np.array_equal(ux, mnist5k.train_images[rest])
    tx, ty = _entries(split.test)
    np.testing.assert_array_equal(tx, mnist5k.test_images)
    np.testing.assert_array_equal(ty, mnist5k.test_labels)
    # `recon-dec data verify` accepts the raw Datums, decoding them
    for db in (split.labeled, split.unlabeled, split.test, split.val):
        assert store.verify_lmdb(db, decode=True)["encoding"] == "raw"
    assert datasets.open_semi(tmp_path / "s") == split
    # every training image labeled
    every = datasets.write_semi_supervised(mnist5k, "all", seed=0, out=tmp_path / "all")
    assert every.info["counts"]["labeled"] == every.info["counts"]["unlabeled"] == 4000
    assert every.val is None and not os.path.exists(tmp_path / "all" / "val_lmdb")


def test_semi_split_fixed_by_seed(tmp_path, mnist5k):
    a = datasets.write_semi_supervised(mnist5k, 50, seed=7, out=tmp_path / "a", val=100)
    b = datasets.write_semi_supervised("mnist5k", 50, seed=7, out=tmp_path / "b", val=100)
    c = datasets.write_semi_supervised(mnist5k, 50, seed=8, out=tmp_path / "c", val=100)
    assert a.info["content_sha256"] == b.info["content_sha256"] != c.info["content_sha256"]
    for role in ("labeled", "unlabeled", "test", "val"):
        # same seed: the same LMDB files, byte for byte
        assert (tmp_path / "a" / f"{role}_lmdb" / "data.mdb").read_bytes() == \
            (tmp_path / "b" / f"{role}_lmdb" / "data.mdb").read_bytes()
    assert a.info["labeled_indices"] == b.info["labeled_indices"]
    assert set(a.info["labeled_indices"]) != set(c.info["labeled_indices"])
    assert a.info["val_indices"] != c.info["val_indices"]
    assert a.info["lmdbs"]["test"] == c.info["lmdbs"]["test"]  # the test set is the same
    # rerun into the same directory: kept as it is; another seed there: refused, nothing touched
    mtime = os.stat(a.labeled + "/data.mdb").st_mtime_ns
    again = datasets.write_semi_supervised(mnist5k, 50, seed=7, out=tmp_path / "a", val=100)
    assert again.info["content_sha256"] == a.info["content_sha256"]
    assert os.stat(a.labeled + "/data.mdb").st_mtime_ns == mtime
    _one_line_error(lambda: datasets.write_semi_supervised(mnist5k, 50, 9, tmp_path / "a", val=100),
                    f"{tmp_path}/a/labeled_lmdb: exists and was written from other data or settings")
    _one_line_error(lambda: datasets.write_semi_supervised(mnist5k, 50, 7, tmp_path / "a"),
                    f"{tmp_path}/a/val_lmdb: exists, but this split has no --val")
    assert os.stat(a.labeled + "/data.mdb").st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "a")) == ["labeled_lmdb", "manifest.json", "test_lmdb",
                                                  "unlabeled_lmdb", "val_lmdb"]


def test_fashion_mnist_split_full_size(tmp_path, fashion):
    t0 = time.time()
    split = datasets.write_semi_supervised(fashion, 1000, seed=0, out=tmp_path / "f", val=5000)
    seconds = time.time() - t0
    info = split.info
    assert info["counts"] == {"train": 60000, "labeled": 1000, "unlabeled": 55000,
                              "test": 10000, "val": 5000}
    assert info["label_histogram"]["labeled"] == {str(c): 100 for c in range(10)}
    assert info["label_histogram"]["test"] == {str(c): 1000 for c in range(10)}
    assert sum(info["label_histogram"]["unlabeled"].values()) == 55000
    assert not set(info["labeled_indices"]) & set(info["val_indices"])
    assert store.verify_lmdb(split.unlabeled)["per_label"] == {"-1": 55000}
    print(f"Fashion-MNIST split (1000 labels, val 5000) written in {seconds:.2f} s")
    assert seconds < 30


def test_caffe_data_layer_reads_raw_datums(tmp_path, mnist5k, caffe):
    split = datasets.write_semi_supervised(mnist5k, 100, seed=1, out=tmp_path / "s")
    lab_idx = np.array(split.info["labeled_indices"])

    def data_net(db, batch):
        path = tmp_path / f"{os.path.basename(db)}.prototxt"
        path.write_text(f"""name: "read"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 }}
  data_param {{ source: "{db}" backend: LMDB batch_size: {batch} }} }}
""")
        return caffe.Net(str(path), caffe.TEST)

    net = data_net(split.labeled, 64)
    for start in (0, 64):  # the second batch wraps around the 100 labeled images
        net.forward()
        rows = lab_idx[np.arange(start, start + 64) % 100]
        assert net.blobs["data"].data.shape == (64, 1, 28, 28)
        np.testing.assert_array_equal(net.blobs["data"].data[:, 0],
                                      mnist5k.train_images[rows].astype(np.float32) / 256)
        np.testing.assert_array_equal(net.blobs["label"].data, mnist5k.train_labels[rows])
    assert net.blobs["data"].data.max() < 1 and net.blobs["data"].data.min() == 0
    net = data_net(split.unlabeled, 100)
    net.forward()
    assert net.blobs["data"].data.shape == (100, 1, 28, 28)
    assert set(net.blobs["label"].data.tolist()) == {-1.0}


def test_raw_datum_with_wrong_size_is_a_one_line_error():
    value = store.make_raw_value(np.zeros((4, 4), np.uint8), 3)
    assert store.decode_value(value)[1] == 3
    d = store._pb2().Datum()
    d.ParseFromString(value)
    d.width = 5
    _one_line_error(lambda: store.decode_value(d.SerializeToString(), where="db: key 00000000"),
                    "db: key 00000000: a raw Datum holds 16 bytes, but declares 1x4x5")


# --------------------------------------------------------------------------
# CLI
def test_cli_semi_writes_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "s"
    bad = [
        (["--dataset", "nope", "--labels", "10"], "--dataset 'nope': unknown data set"),
        (["--dataset", "mnist5k", "--labels", "105"], "--labels 105: not divisible by the 10 classes"),
        (["--dataset", "mnist5k", "--labels", "5000"],
         "--labels 5000: needs 500 of each class, but class 0 of mnist5k has 400 training images"),
        (["--dataset", "mnist5k", "--labels", "4000", "--val", "1"], "has 399 training images after --val 1"),
        (["--dataset", "mnist5k", "--labels", "ten"], "--labels 'ten': expected a number or 'all'"),
        (["--dataset", "mnist5k", "--labels", "10", "--val", "4000"], "--val 4000: mnist5k has only 4000"),
        (["--dataset", "mnist5k", "--labels", "10", "--seed", "-1"], "--seed -1: must be a non-negative"),
        (["--dataset", f"idx:{tmp_path}/a,b,c,d", "--labels", "10"], f"{tmp_path}/a: no such IDX file"),
    ]
    for args, match in bad:
        assert cli.main(["data", "semi", *args, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("recon-dec: error: ") and match in err[0], err
        assert not out.exists()  # nothing written
    (tmp_path / "file").write_text("")
    assert cli.main(["data", "semi", "--dataset", "mnist5k", "--labels", "10",
                     "--out", str(tmp_path / "file")]) == 2
    assert "file: exists and is not a directory" in capsys.readouterr().err
    # the installed entry point, end to end, then `data verify` on what it wrote
    r = subprocess.run([PY, "-m", "recon_dec.cli", "data", "semi", "--dataset", "mnist5k",
                        "--labels", "20", "--seed", "2", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "labeled_lmdb: 20 images" in r.stdout and "unlabeled_lmdb: 4000 images (labels -1)" in r.stdout
    r = subprocess.run([PY, "-m", "recon_dec.cli", "data", "verify", "--decode", str(out / "labeled_lmdb")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "OK (20 images" in r.stdout, r.stderr
