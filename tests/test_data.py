"""recon_dec.data: LMDB build/verify/resume, and the ScaleJitterData layer
read through pycaffe on an LMDB we built."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import recon_dec_fixtures as fx  # noqa: E402
from recon_dec.data import store as data  # noqa: E402
from recon_dec.errors import ReconDecError  # noqa: E402

PY = sys.executable


def test_build_and_verify_real_images(tmp_path):
    lst, items = fx.make_image_folder(str(tmp_path / "img"), per_class=3)
    m = data.build_lmdb(data.read_list(lst, str(tmp_path / "img")), tmp_path / "db",
                        shorter_edge=32, encoding="png", progress=False)
    assert m["count"] == 12 and m["complete"] and m["num_classes"] == 4
    assert m["per_label"] == {"0": 3, "1": 3, "2": 3, "3": 3}
    assert data.verify_lmdb(tmp_path / "db", decode=True)["sha256"] == m["sha256"]
    entries = list(data.iter_lmdb(tmp_path / "db"))
    assert [k for k, _ in entries] == [f"{i:08d}".encode() for i in range(12)]
    for (k, v), (path, label) in zip(entries, items):
        img, lab = data.decode_value(v)
        assert lab == label
        assert min(img.shape[:2]) == 32
        src = cv2.imread(path)
        assert img.shape[1] == int(np.floor(src.shape[1] * 32 / src.shape[0] + 0.5))
        # PNG is lossless: equal to the resized source (JPEG sources differ only by their own loss)
        assert np.array_equal(img, data.resize_shorter(src, 32))


def test_in_memory_grey_arrays_and_jpeg(tmp_path):
    rng = np.random.RandomState(0)
    items = [(rng.randint(0, 255, (28, 28), dtype=np.uint8), i % 10) for i in range(20)]
    m = data.build_lmdb(items, tmp_path / "mnist", encoding="png", progress=False)
    img, lab = data.decode_value(next(data.iter_lmdb(tmp_path / "mnist"))[1])
    assert img.shape == (28, 28) and lab == 0 and np.array_equal(img, items[0][0])
    assert m["count"] == 20
    m2 = data.build_lmdb(items[:5], tmp_path / "jpg", shorter_edge=56, encoding="jpg", progress=False)
    img, _ = data.decode_value(next(data.iter_lmdb(tmp_path / "jpg"))[1])
    assert img.shape == (56, 56) and m2["encoding"] == "jpg"


def test_resume_after_interruption_gives_same_checksum(tmp_path):
    lst, items = fx.make_image_folder(str(tmp_path / "img"), per_class=4)
    full = data.build_lmdb(items, tmp_path / "ref", shorter_edge=32, progress=False)
    # item 9's file is missing: the build stops there, having committed 0..5
    moved = items[9][0] + ".away"
    os.rename(items[9][0], moved)
    with pytest.raises(ReconDecError, match="img_2.jpg: no such image file"):
        data.build_lmdb(items, tmp_path / "db", shorter_edge=32, progress=False, commit_every=4)
    assert len(list(data.iter_lmdb(tmp_path / "db"))) == 9  # all before the failing item
    with pytest.raises(ReconDecError, match="did not finish"):
        data.verify_lmdb(tmp_path / "db")
    os.rename(moved, items[9][0])
    m = data.build_lmdb(items, tmp_path / "db", shorter_edge=32, progress=False, commit_every=3,
                        workers=2)
    assert m["resumed_from"] == 9
    assert m["count"] == 16 and m["sha256"] == full["sha256"]
    data.verify_lmdb(tmp_path / "db")
    # another list into the same DB is refused
    with pytest.raises(ReconDecError, match="another list"):
        data.build_lmdb(items[:3], tmp_path / "db", shorter_edge=32, progress=False)


def test_corrupt_and_missing_lmdb_errors(tmp_path):
    with pytest.raises(ReconDecError, match=f"{tmp_path}/nope: no such LMDB"):
        data.verify_lmdb(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(ReconDecError, match=f"{bad}: corrupt"):
        data.check_lmdb(bad)
    # a changed entry is caught by the checksum
    items = [(np.full((8, 8), i, np.uint8), i) for i in range(4)]
    data.build_lmdb(items, tmp_path / "ok", progress=False)
    import lmdb
    env = lmdb.open(str(tmp_path / "ok"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(b"00000002", txn.get(b"00000001"))
    env.close()
    with pytest.raises(ReconDecError, match="checksum mismatch"):
        data.verify_lmdb(tmp_path / "ok")


def test_cli_build_verify_one_line_errors(tmp_path):
    lst, _ = fx.make_image_folder(str(tmp_path / "img"), per_class=2)
    code = ("import sys, argparse; from recon_dec import cli; from recon_dec.data import store as data;"
            "p=argparse.ArgumentParser(); s=p.add_subparsers(dest='c', required=True);"
            "data.register(s); a=p.parse_args(sys.argv[1:]);"
            "\ntry: a.func(a)\nexcept cli.ReconDecError as e: print('recon-dec: error:', e, file=sys.stderr); sys.exit(2)")
    r = subprocess.run([PY, "-c", code, "data", "build", "--images", str(tmp_path / "img"),
                        "--list", lst, "--out", str(tmp_path / "db"), "--shorter-edge", "32",
                        "--encoding", "png"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8 images, 4 classes" in r.stdout
    r = subprocess.run([PY, "-c", code, "data", "verify", str(tmp_path / "db")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "OK (8 images" in r.stdout
    r = subprocess.run([PY, "-c", code, "data", "verify", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"recon-dec: error: {tmp_path}/missing: no such LMDB"]


def test_scale_jitter_layer_reads_our_lmdb(tmp_path):
    """TEST phase through pycaffe equals the Python centre crop exactly;
    TRAIN draws scales in [min, max] and is seed-deterministic."""
    import caffe
    lst, items = fx.make_image_folder(str(tmp_path / "img"), per_class=2, ext_cycle=(".png",))
    data.build_lmdb(items, tmp_path / "db", shorter_edge=32, progress=False)
    caffe.set_mode_cpu()

    def net(phase, seed=1, threads=2):
        p = fx.write(str(tmp_path / f"net_{phase}_{seed}_{threads}.prototxt"), 'name: "d"\n' + fx.data_layer(
            str(tmp_path / "db"), 8, phase, seed=seed, threads=threads).replace(
            'top: "label"', 'top: "label" top: "info"').replace("include { phase: TRAIN }", "").replace(
            "include { phase: TEST }", ""))
        return caffe.Net(p, caffe.TRAIN if phase == "TRAIN" else caffe.TEST)

    n = net("TEST")
    n.forward()
    x = n.blobs["data"].data
    for i in range(8):
        img, lab = data.decode_value(list(data.iter_lmdb(tmp_path / "db"))[i][1])
        want = (data.centre_crop(img, 28).astype(np.float32) - 128) / 64
        assert np.allclose(x[i], want.transpose(2, 0, 1), atol=1e-6)
        assert n.blobs["label"].data[i] == lab
    sizes, mirrored = [], []
    a = net("TRAIN", seed=5, threads=1)
    b = net("TRAIN", seed=5, threads=3)
    for _ in range(10):
        a.forward()
        b.forward()
        assert np.array_equal(a.blobs["data"].data, b.blobs["data"].data)
        sizes += list(a.blobs["info"].data[:, 0])
        mirrored += list(a.blobs["info"].data[:, 3])
    assert min(sizes) >= 32 and max(sizes) <= 40 and len(set(sizes)) > 4
    assert 0.25 < np.mean(mirrored) < 0.75
