"""Image LMDBs for Caffe: encoded-image ``Datum`` records (JPEG/PNG, the
shorter edge resized to a fixed size), keys ``%08d`` in list order, written
resumably, with a manifest (count, SHA-256) that ``verify_lmdb`` re-checks.

The manifest lives inside the LMDB directory as ``recon_dec_manifest.json``
(Caffe ignores files it does not know)."""
import contextlib
import hashlib
import json
import os
import struct
import time

import numpy as np

from .. import atomic, values
from ..caffe_io.protos import pb2 as _pb2, read_text_file
from ..errors import ReconDecError

MANIFEST = "recon_dec_manifest.json"
FORMAT = "recon-dec-lmdb/1"
MAP_SIZE = 1 << 40  # sparse on Linux; only what is written takes space
COMMIT_EVERY = 256


def _cv2():
    import cv2
    if not getattr(_cv2, "quiet", False):  # errors are ours to report, in one line
        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        except AttributeError:
            pass
        _cv2.quiet = True
    return cv2


def _truncated(data):
    """True when encoded image bytes end before their format's end marker
    (OpenCV decodes a cut JPEG anyway, the missing part grey)."""
    head, tail = bytes(data[:8]), bytes(data[-4096:])
    if head[:3] == b"\xff\xd8\xff":  # JPEG: ends with EOI, maybe padded
        return not tail.rstrip(b"\x00 \r\n\t").endswith(b"\xff\xd9")
    if head == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail
    return False


def decode_bytes(data, flag, what):
    """OpenCV's imdecode of ``data`` with one-line errors naming ``what``."""
    cv2 = _cv2()
    if not len(data):
        raise ReconDecError(f"{what}: empty image data")
    if _truncated(data):
        raise ReconDecError(f"{what}: the image is truncated (its data ends before the end marker)")
    try:
        with _quiet_stderr():  # libjpeg/libpng print their own warnings
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as e:
        raise ReconDecError(f"{what}: OpenCV cannot decode the image ({_cv_reason(e)})") from None
    if img is None or img.size == 0:
        raise ReconDecError(f"{what}: not a readable image (OpenCV cannot decode it)")
    return img


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block: C libraries' own
    messages would add lines to our one-line errors."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cv_reason(e):
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


# --------------------------------------------------------------------------
# images
def resize_shorter(img, size):
    """Resizes ``img`` (HxW or HxWxC uint8) so its shorter edge is ``size``,
    keeping the aspect ratio (the longer edge rounded half up) -- the same
    rule as the ScaleJitterData layer. ``size`` None/0 keeps the image."""
    if not size:
        return img
    h, w = img.shape[:2]
    if max(h, w) * size / min(h, w) > values.MAX_IMAGE_SIDE * 4:
        raise ReconDecError(f"an image of {h}x{w} resized to a shorter edge of {size} would be too large")
    if h <= w:
        nh, nw = size, int(np.floor(w * size / h + 0.5))
    else:
        nh, nw = int(np.floor(h * size / w + 0.5)), size
    if (nh, nw) == (h, w):
        return img
    return _cv2().resize(img, (nw, nh), interpolation=_cv2().INTER_LINEAR)


def centre_crop(img, crop):
    h, w = img.shape[:2]
    if h < crop or w < crop:
        raise ValueError(f"image {h}x{w} is smaller than the {crop} crop")
    y, x = (h - crop) // 2, (w - crop) // 2
    return img[y:y + crop, x:x + crop]


def load_image(item, channels=None):
    """``item`` is a path or a uint8 array (HxW grey or HxWx3 BGR). A file
    is read as BGR, or grey with ``channels`` 1."""
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or \
                (item.ndim == 3 and item.shape[2] not in (1, 3)):
            raise ReconDecError(f"in-memory image: need a uint8 HxW or HxWx3 array, "
                                f"got {item.dtype} {item.shape}")
        return item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
    path = os.fspath(item)
    if not os.path.isfile(path):
        raise ReconDecError(f"{path}: no such image file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the image ({e.strerror or e})") from None
    cv2 = _cv2()
    return decode_bytes(raw, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR, path)


def encode_image(img, encoding="png", quality=95):
    cv2 = _cv2()
    ext = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png"}.get(encoding)
    if ext is None:
        raise ReconDecError(f"unknown encoding '{encoding}' (jpg or png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    try:
        ok, buf = cv2.imencode(ext, img, params)
    except cv2.error as e:
        raise ReconDecError(f"OpenCV could not encode an image as {encoding} ({_cv_reason(e)})") from None
    if not ok:
        raise ReconDecError(f"OpenCV could not encode an image as {encoding}")
    return buf.tobytes()


def decode_value(value, color=None, where=""):
    """Datum bytes -> (uint8 image HxW or HxWx3 BGR, label)."""
    cv2 = _cv2()
    d = _pb2().Datum()
    try:
        d.ParseFromString(value)
    except Exception:
        raise ReconDecError(f"{where}: an entry is not a caffe Datum")
    if d.encoded:
        flag = cv2.IMREAD_UNCHANGED if color is None else \
            (cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
        img = decode_bytes(d.data, flag, where)
    else:
        if len(d.data) != d.channels * d.height * d.width or not d.data:
            raise ReconDecError(f"{where}: a raw Datum holds {len(d.data)} bytes, but declares "
                                f"{d.channels}x{d.height}x{d.width}")
        img = np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
        img = img[0] if d.channels == 1 else img.transpose(1, 2, 0)
        if color is True and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif color is False and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img, d.label


def make_value(encoded, label, shape):
    d = _pb2().Datum()
    d.encoded = True
    d.label = int(label)
    d.data = encoded
    d.height, d.width = shape[:2]
    d.channels = 1 if len(shape) == 2 else shape[2]
    return d.SerializeToString()


def check_label(label, where):
    """Labels are Caffe int32s; -1 marks an unlabeled image."""
    if not -1 <= label <= values.INT_MAX:
        raise ReconDecError(f"{where}: label {label} is out of range (-1 .. {values.INT_MAX})")
    return label


def make_raw_value(img, label):
    """A raw (unencoded) uint8 Datum of ``img`` (HxW, or CxHxW as Caffe
    stores it), ``encoded`` false: Caffe's ``Data`` layer copies the bytes
    without OpenCV. ``label`` may be -1 (an unlabeled image)."""
    img = np.ascontiguousarray(img, np.uint8)
    chw = img.shape if img.ndim == 3 else (1,) + img.shape
    d = _pb2().Datum()
    d.channels, d.height, d.width = chw
    d.data = img.tobytes()
    d.label = int(label)
    d.encoded = False
    return d.SerializeToString()


# --------------------------------------------------------------------------
# lists
def read_list(list_file, images_root="."):
    """``path label`` per line (Caffe's convert_imageset format) ->
    [(absolute path, label)]."""
    items = []
    lines = read_text_file(list_file, "image list").splitlines()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        try:
            label = int(parts[1])
        except (IndexError, ValueError):
            raise ReconDecError(f"{list_file}: line {n}: expected 'PATH LABEL', got '{line[:200]}'")
        check_label(label, f"{list_file}: line {n}")
        items.append((os.path.join(images_root, parts[0]), label))
    if not items:
        raise ReconDecError(f"{list_file}: the list is empty")
    return items


def _fingerprint(items, shorter_edge, encoding, channels=None):
    grey = "|grey" if channels == 1 else ""  # unchanged for the colour LMDBs built before --channels
    h = hashlib.sha256(f"{shorter_edge}|{encoding}|{len(items)}{grey}\n".encode())
    for item, label in items:
        if isinstance(item, np.ndarray):
            h.update(hashlib.sha256(np.ascontiguousarray(item).tobytes()).digest())
            h.update(str(item.shape).encode())
        else:
            h.update(os.fspath(item).encode())
        h.update(f"|{int(label)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------
# LMDB access with one-line errors
LMDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<IIQQ48s48sQQ")  # after the 16-byte page header (64-bit LMDB)


def check_lmdb_file(db):
    """Checks ``db``/data.mdb against its own meta pages before LMDB maps
    it: reading a page beyond the end of a truncated file would kill the
    process with SIGBUS. Returns the number of pages in use."""
    path = os.path.join(db, "data.mdb")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16 + _META.size)
            metas = [head]
            if len(head) == 16 + _META.size:
                psize = struct.unpack_from("<I", head, 16 + 24)[0]
                if 512 <= psize <= 1 << 16 and size >= 2 * psize:
                    f.seek(psize)
                    metas.append(f.read(16 + _META.size))
    except OSError as e:
        raise ReconDecError(f"{db}: cannot read the LMDB ({e.strerror or e})") from None
    best = None
    for page in metas:
        if len(page) < 16 + _META.size:
            continue
        magic, version, _, _, free_db, main_db, last_pg, txnid = _META.unpack_from(page, 16)
        if magic != LMDB_MAGIC:
            continue
        psize = struct.unpack_from("<I", free_db, 0)[0]
        if best is None or txnid > best[2]:
            best = (psize, last_pg, txnid, struct.unpack_from("<Q", main_db, 40)[0])
    if best is None:
        raise ReconDecError(f"{db}: corrupt or not an LMDB (data.mdb has no valid header)" if size else
                            f"{db}: the LMDB is empty (data.mdb has 0 bytes)")
    psize, last_pg, _, root = best
    if not 512 <= psize <= 1 << 16 or psize & (psize - 1):
        raise ReconDecError(f"{db}: corrupt LMDB (page size {psize} in its header)")
    need = (last_pg + 1) * psize
    if size < need:
        raise ReconDecError(f"{db}: the LMDB is truncated (data.mdb has {size} bytes, its header says "
                            f"{need}); rebuild it or copy it again")
    if root != 2 ** 64 - 1 and root > last_pg:
        raise ReconDecError(f"{db}: corrupt LMDB (its root page {root} lies beyond its last page {last_pg})")
    return last_pg + 1


def isolated(fn, *args, what=""):
    """``fn(*args)`` in a forked child, its result (or ReconDecError) sent
    back: a corrupt LMDB page that makes liblmdb read out of bounds kills
    the child (SIGSEGV/SIGBUS), which is reported here in one line."""
    import pickle
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                out = ("ok", fn(*args))
            except ReconDecError as e:
                out = ("error", str(e))
            except BaseException as e:  # noqa: BLE001 - reported by the parent
                out = ("error", f"{what}: {type(e).__name__}: {e}")
            data = pickle.dumps(out)
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        if os.WTERMSIG(status) in (signal.SIGINT, signal.SIGTERM):
            raise KeyboardInterrupt
        raise ReconDecError(f"{what}: corrupt LMDB (reading it crashed the reader with {sig})")
    try:
        kind, value = pickle.loads(data)
    except Exception:
        raise ReconDecError(f"{what}: corrupt LMDB (its reader failed)") from None
    if kind == "error":
        raise ReconDecError(value)
    return value


def open_lmdb(db, write=False):
    import lmdb
    db = os.fspath(db)
    if not write:
        if not os.path.exists(db):
            raise ReconDecError(f"{db}: no such LMDB")
        if not os.path.isfile(os.path.join(db, "data.mdb")):
            raise ReconDecError(f"{db}: not an LMDB directory (no data.mdb)")
    if os.path.isfile(os.path.join(db, "data.mdb")) and (not write or os.path.getsize(os.path.join(db, "data.mdb"))):
        check_lmdb_file(db)
    try:
        if write:
            return lmdb.open(db, map_size=MAP_SIZE, subdir=True, sync=True)
        return lmdb.open(db, readonly=True, lock=False, subdir=True)
    except lmdb.Error as e:
        raise ReconDecError(f"{db}: corrupt or unreadable LMDB ({str(e).splitlines()[0]})")


def read_manifest(db):
    path = os.path.join(os.fspath(db), MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        m = json.loads(read_text_file(path, "manifest"))
    except ValueError:
        raise ReconDecError(f"{path}: corrupt manifest (not JSON)") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ReconDecError(f"{path}: not a recon-dec LMDB manifest (format {FORMAT})")
    for key, kind in (("complete", bool), ("count", int), ("sha256", str), ("fingerprint", str)):
        if key in m and not isinstance(m[key], kind):
            raise ReconDecError(f"{path}: corrupt manifest ('{key}' is not a {kind.__name__})")
    if m.get("complete") and not (isinstance(m.get("count"), int) and isinstance(m.get("sha256"), str)):
        raise ReconDecError(f"{path}: corrupt manifest (a complete build without count and sha256)")
    return m


def check_lmdb(db):
    """Cheap check that ``db`` opens and has at least one entry (for the
    training driver and evaluation, before Caffe would abort on it); in a
    forked child, so that a corrupt page cannot take this process down."""
    open_lmdb(db).close()  # header and size checks first, in this process
    return isolated(_check_lmdb, os.fspath(db), what=os.fspath(db))


def _check_lmdb(db):
    import lmdb
    env = open_lmdb(db)
    try:
        with env.begin() as txn:
            n = txn.stat()["entries"]
            if n == 0:
                raise ReconDecError(f"{db}: the LMDB is empty")
            cur = txn.cursor()
            cur.first()
            cur.value()
    except lmdb.Error as e:
        raise ReconDecError(f"{db}: corrupt LMDB ({str(e).splitlines()[0]})")
    finally:
        env.close()
    return n


def first_image(db):
    """(channels, height, width) of the first image of ``db``, as Caffe's
    Data layer reads it (encoded images decoded as stored: a grey PNG/JPEG
    has 1 channel), after the cheap checks of ``check_lmdb``."""
    check_lmdb(db)
    key, value = isolated(_first_entry, os.fspath(db), what=os.fspath(db))
    img, _ = decode_value(value, None, f"{db}: key {key.decode(errors='replace')}")
    h, w = img.shape[:2]
    return (1 if img.ndim == 2 else img.shape[2]), h, w


def _first_entry(db):
    env = open_lmdb(db)
    try:
        with env.begin() as txn:
            cur = txn.cursor()
            cur.first()
            return bytes(cur.key()), bytes(cur.value())
    finally:
        env.close()


def iter_lmdb(db):
    """Yields (key bytes, value bytes) in key order."""
    import lmdb
    env = open_lmdb(db)
    try:
        with env.begin() as txn:
            for k, v in txn.cursor():
                yield k, v
    except lmdb.Error as e:
        raise ReconDecError(f"{db}: corrupt LMDB ({str(e).splitlines()[0]})")
    finally:
        env.close()


def _progress(total, initial, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="img",
                disable=not enabled or not values.stderr_tty(), dynamic_ncols=True)



# --------------------------------------------------------------------------
def _encode_item(args):
    item, label, shorter_edge, encoding, quality, channels = args
    img = load_image(item, channels)
    if channels == 1 and img.ndim == 3:
        img = _cv2().cvtColor(img, _cv2().COLOR_BGR2GRAY)
    elif channels == 3 and img.ndim == 2:
        img = _cv2().cvtColor(img, _cv2().COLOR_GRAY2BGR)
    img = resize_shorter(img, shorter_edge)
    return make_value(encode_image(img, encoding, quality), label, img.shape)


def build_lmdb(items, out, shorter_edge=None, encoding="png", quality=95,
               progress=True, commit_every=COMMIT_EVERY, workers=1, channels=None):
    """Writes ``items`` ([(path or uint8 array, label)]) to the LMDB ``out``
    as encoded Datums, shorter edge resized to ``shorter_edge`` (None keeps
    the size). Resumable: rerun with the same items after an interruption and
    it continues after the last committed entry. ``workers`` > 1 decodes and
    encodes in that many processes (keys stay in list order). ``channels``
    1 stores grey images, 3 colour (BGR), None as they come (files as BGR).
    Returns the manifest."""
    import lmdb
    out = os.fspath(out)
    items = list(items)
    if not items:
        raise ReconDecError(f"{out}: nothing to write (empty item list)")
    if channels not in (None, 1, 3):
        raise ReconDecError(f"--channels: {channels} is not 1 or 3")
    fp = _fingerprint(items, shorter_edge, encoding, channels)
    manifest = read_manifest(out) if os.path.isdir(out) else None
    if os.path.exists(out) and manifest is None and os.listdir(out):
        raise ReconDecError(f"{out}: exists and was not written by recon-dec data build; "
                            "remove it or choose another --out")
    if manifest is not None and manifest.get("fingerprint") != fp:
        raise ReconDecError(f"{out}: already holds an LMDB built from another list or "
                            "settings; remove it or choose another --out")
    if manifest is not None and manifest.get("complete"):
        return manifest
    base = {"format": FORMAT, "fingerprint": fp, "shorter_edge": shorter_edge,
            "encoding": encoding, "total": len(items)}
    if channels:
        base["channels"] = channels
    os.makedirs(out, exist_ok=True)
    atomic.write_text(os.path.join(out, MANIFEST),
                      json.dumps(dict(base, complete=False), indent=1))
    env = open_lmdb(out, write=True)
    sha = hashlib.sha256()
    labels = {}
    start = 0
    try:
        with env.begin() as txn:       # re-hash what an earlier run committed
            for k, v in txn.cursor():
                if int(k) != start:
                    raise ReconDecError(f"{out}: unexpected key {k!r} (the LMDB is not "
                                        "one recon-dec wrote in list order)")
                sha.update(k)
                sha.update(v)
                lab = items[start][1]
                labels[lab] = labels.get(lab, 0) + 1
                start += 1
        bar = _progress(len(items), start, os.path.basename(out.rstrip("/")), progress)
        t0 = time.time()
        txn = env.begin(write=True)
        jobs = ((items[i][0], items[i][1], shorter_edge, encoding, quality, channels)
                for i in range(start, len(items)))
        pool = None
        if workers and workers > 1 and len(items) - start > 1:
            import multiprocessing
            pool = multiprocessing.get_context("fork").Pool(workers)
            values = pool.imap(_encode_item, jobs, chunksize=16)
        else:
            values = map(_encode_item, jobs)
        for i in range(start, len(items)):
            label = items[i][1]
            try:
                value = next(values)
            except BaseException:
                if pool is not None:
                    pool.terminate()
                txn.commit()  # keep what precedes the failing item
                raise
            key = f"{i:08d}".encode()
            txn.put(key, value)
            sha.update(key)
            sha.update(value)
            labels[label] = labels.get(label, 0) + 1
            if (i + 1) % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
            bar.update(1)
        txn.commit()
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
        env.sync()
    except lmdb.Error as e:
        raise ReconDecError(f"{out}: LMDB error ({str(e).splitlines()[0]})")
    finally:
        env.close()
    manifest = dict(base, complete=True, count=len(items), sha256=sha.hexdigest(),
                    resumed_from=start,
                    num_classes=max(labels) + 1 if labels else 0,
                    per_label={str(k): labels[k] for k in sorted(labels)},
                    seconds_last_run=round(time.time() - t0, 3))
    atomic.write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def reusable_lmdb(out, fingerprint):
    """The manifest of ``out`` if it is a complete LMDB written from the
    same ``fingerprint`` (nothing to redo), None if ``out`` does not exist;
    a ReconDecError if it exists and holds anything else."""
    out = os.fspath(out)
    if not os.path.lexists(out):
        return None
    manifest = read_manifest(out) if os.path.isdir(out) else None
    if manifest is None or manifest.get("fingerprint") != fingerprint or \
            not manifest.get("complete"):
        raise ReconDecError(f"{out}: exists and was written from other data or settings; "
                            "remove it or choose another --out")
    return manifest


def write_raw_lmdb(images, labels, out, fingerprint, progress=False, commit_every=8192):
    """Writes ``images`` (N x H x W or N x C x H x W uint8) with ``labels``
    as raw Datums (``make_raw_value``), keys ``%08d`` in array order, to the
    new LMDB ``out``, with the manifest ``verify_lmdb`` checks (encoding
    "raw"). Atomic: built in a temporary directory beside ``out`` and
    renamed into place, so ``out`` is complete or absent. ``fingerprint``
    names what was written: an ``out`` already built from the same one is
    kept (returns its manifest), any other ``out`` is refused."""
    import lmdb
    import shutil
    import tempfile
    out = os.fspath(out).rstrip("/")
    done = reusable_lmdb(out, fingerprint)
    if done is not None:
        return done
    if len(images) != len(labels) or not len(images):
        raise ReconDecError(f"{out}: need as many labels as images, and at least one "
                            f"(got {len(images)} and {len(labels)})")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=parent)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would follow the rename
    except OSError as e:
        raise ReconDecError(f"{out}: cannot write here ({e.strerror})") from None
    sha, hist, t0 = hashlib.sha256(), {}, time.time()
    try:
        env = lmdb.open(tmp, map_size=MAP_SIZE, subdir=True)
        try:
            bar = _progress(len(images), 0, os.path.basename(out), progress)
            for start in range(0, len(images), commit_every):
                with env.begin(write=True) as txn:
                    for i in range(start, min(start + commit_every, len(images))):
                        key, value = f"{i:08d}".encode(), make_raw_value(images[i], labels[i])
                        txn.put(key, value, append=True)
                        sha.update(key)
                        sha.update(value)
                        hist[int(labels[i])] = hist.get(int(labels[i]), 0) + 1
                bar.update(min(commit_every, len(images) - start))
            bar.close()
            env.sync()
        finally:
            env.close()
        manifest = {"format": FORMAT, "fingerprint": fingerprint, "shorter_edge": None,
                    "encoding": "raw", "total": len(images), "complete": True,
                    "count": len(images), "sha256": sha.hexdigest(), "resumed_from": 0,
                    "num_classes": max(hist) + 1 if max(hist) >= 0 else 0,
                    "per_label": {str(k): hist[k] for k in sorted(hist)},
                    "seconds_last_run": round(time.time() - t0, 3)}
        atomic.write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1))
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, lmdb.Error):
            raise ReconDecError(f"{out}: LMDB error ({str(e).splitlines()[0]})") from None
        if isinstance(e, OSError):
            raise ReconDecError(f"{out}: cannot write it ({e.strerror or e})") from None
        raise
    return manifest


def _walk(db, decode, total, progress):
    """(entries, SHA-256 of keys and values) of ``db``, decoding each image
    with ``decode``."""
    sha = hashlib.sha256()
    n = 0
    bar = _progress(total, 0, "verify", progress)
    for k, v in iter_lmdb(db):
        sha.update(k)
        sha.update(v)
        if decode:
            decode_value(v, where=f"{db}: key {k.decode(errors='replace')}")
        n += 1
        bar.update(1)
    bar.close()
    return n, sha.hexdigest()


def walk(db):
    """(entries, SHA-256) of ``db`` read in a forked child: every page is
    known to be readable afterwards."""
    check_lmdb(db)
    return isolated(_walk, os.fspath(db), False, None, False, what=os.fspath(db))


def verify_lmdb(db, decode=False, progress=False):
    """Re-counts and re-hashes ``db`` against its manifest; with ``decode``
    also decodes every image. Returns the manifest; raises ReconDecError."""
    db = os.fspath(db)
    env = open_lmdb(db)
    env.close()
    manifest = read_manifest(db)
    if manifest is None:
        raise ReconDecError(f"{db}: no {MANIFEST}; was it written by recon-dec data build?")
    if not manifest.get("complete"):
        raise ReconDecError(f"{db}: the build did not finish; rerun the same "
                            "`recon-dec data build` to resume it")
    n, digest = isolated(_walk, db, decode, manifest["count"], progress, what=db)
    if n != manifest["count"]:
        raise ReconDecError(f"{db}: {n} entries, the manifest says {manifest['count']}")
    if digest != manifest["sha256"]:
        raise ReconDecError(f"{db}: checksum mismatch (the LMDB changed since it was built)")
    return manifest


# --------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("data", help="build and verify image LMDBs, semi-supervised splits")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="encoded-image LMDB from an image list (resumable)")
    b.add_argument("--images", required=True, help="root the list's paths are relative to")
    b.add_argument("--list", required=True, help="'PATH LABEL' per line")
    b.add_argument("--out", required=True, help="LMDB directory to write")
    b.add_argument("--shorter-edge", type=values.arg_int(0, values.MAX_IMAGE_SIDE), default=512,
                   help="resize so the shorter edge is this (train 512, val 256; 0 keeps)")
    b.add_argument("--encoding", choices=["jpg", "png"], default="jpg")
    b.add_argument("--quality", type=values.arg_int(0, 100), default=95, help="JPEG quality (0-100)")
    b.add_argument("--channels", type=int, choices=[1, 3], default=3,
                   help="3: colour (BGR, default); 1: grey, for nets with a 1-channel input")
    b.add_argument("--workers", type=values.arg_int(1, 1024), default=os.cpu_count() or 1,
                   help="decoding/encoding processes (default: all CPUs)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_build)
    v = sub.add_parser("verify", help="re-check an LMDB's count and checksum")
    v.add_argument("db")
    v.add_argument("--decode", action="store_true", help="also decode every image")
    v.set_defaults(func=_cmd_verify)
    s = sub.add_parser("semi", help="semi-supervised split as raw-Datum LMDBs: labeled, "
                       "unlabeled (labels -1), test, optional val (docs/DATASETS.md)")
    s.add_argument("--dataset", required=True,
                   help="mnist5k, fashion-mnist, or idx:TRAIN_IMAGES,TRAIN_LABELS,TEST_IMAGES,TEST_LABELS")
    s.add_argument("--labels", required=True,
                   help="labeled images, the same number of each class (or 'all')")
    s.add_argument("--seed", type=int, default=0, help="fixes the split (default 0)")
    s.add_argument("--out", required=True, help="directory for the LMDBs and manifest.json")
    s.add_argument("--val", type=values.arg_int(0), default=0,
                   help="training images held out, with labels, as val_lmdb (default 0: none)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_semi)


def _cmd_build(args):
    values.check_out_dir(args.out)
    items = read_list(args.list, args.images)
    m = build_lmdb(items, args.out, args.shorter_edge or None, args.encoding,
                   args.quality, progress=not args.no_progress, workers=args.workers,
                   channels=args.channels)
    print(f"{args.out}: {m['count']} images, {m['num_classes']} classes, sha256 {m['sha256'][:16]}...")


def _cmd_verify(args):
    m = verify_lmdb(args.db, decode=args.decode, progress=True)
    print(f"{args.db}: OK ({m['count']} images, sha256 {m['sha256'][:16]}...)")


def _cmd_semi(args):
    from . import datasets  # it imports this module
    values.check_out_dir(args.out)
    split = datasets.write_semi_supervised(args.dataset, args.labels, args.seed, args.out,
                                           val=args.val, progress=not args.no_progress)
    print(datasets.describe(split))
