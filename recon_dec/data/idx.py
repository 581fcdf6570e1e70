"""Reader (and writer) of IDX files, the format of MNIST and Fashion-MNIST:
a big-endian header -- two zero bytes, a type code (0x08 = unsigned byte,
the only one these data sets use), the number of dimensions -- then one
big-endian uint32 per dimension, then the data, row-major. Labels are
``0x00000801`` (N), images ``0x00000803`` (N, H, W). Plain or gzip files
(recognised by their first bytes, whatever the name).

Every defect is a one-line ``ReconDecError`` naming the file: bad magic,
unsupported type code, wrong number of dimensions, a size that does not
match the file's length, a truncated or corrupt gzip stream, and label and
image counts that differ when read as a pair."""
import gzip
import os
import struct
import zlib

import numpy as np

from .. import atomic
from ..errors import ReconDecError

UBYTE = 0x08
TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short",
              0x0C: "int", 0x0D: "float", 0x0E: "double"}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the IDX file ({e.strerror})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        reason = "truncated" if isinstance(e, EOFError) else str(e).splitlines()[0]
        raise ReconDecError(f"{path}: corrupt gzip stream ({reason})") from None


def read_idx(path, ndim=None):
    """The array stored in the IDX file ``path`` (uint8, its declared
    shape). ``ndim`` (1 for labels, 3 for images) is checked when given."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ReconDecError(f"{path}: not an IDX file ({len(raw)} bytes, shorter than the header)")
    zero, type_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise ReconDecError(f"{path}: not an IDX file (magic 0x{raw[:4].hex()}, "
                            "expected 0x000008NN)")
    if type_code != UBYTE:
        name = TYPE_NAMES.get(type_code, "unknown")
        raise ReconDecError(f"{path}: IDX type code 0x{type_code:02x} ({name}); "
                            "only 0x08 (unsigned byte) is supported")
    if ndim is not None and dims != ndim:
        want = {1: "labels (0x00000801)", 3: "images (0x00000803)"}.get(ndim, f"{ndim} dimensions")
        raise ReconDecError(f"{path}: IDX file has {dims} dimension(s) "
                            f"(magic 0x{raw[:4].hex()}), expected {want}")
    if dims == 0:
        raise ReconDecError(f"{path}: IDX file declares 0 dimensions")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ReconDecError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes"
        raise ReconDecError(f"{path}: {what}: header declares shape "
                            f"{'x'.join(map(str, shape))} = {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_images(path):
    """(N, H, W) uint8 from an ``0x00000803`` file."""
    return read_idx(path, ndim=3)


def read_labels(path):
    """(N,) uint8 from an ``0x00000801`` file."""
    return read_idx(path, ndim=1)


def read_pair(images_path, labels_path):
    """(images (N, H, W) uint8, labels (N,) int64); the counts must agree."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise ReconDecError(f"{labels_path}: {len(labels)} labels, but {images_path} "
                            f"holds {len(images)} images")
    return images, labels.astype(np.int64)


def encode_idx(array):
    """IDX bytes of a uint8 array (any number of dimensions >= 1)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim < 1 or array.ndim > 255:
        raise ReconDecError(f"IDX: need a uint8 array with 1..255 dimensions, "
                            f"got {array.dtype} {array.shape}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + \
        struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path, array):
    """Writes ``array`` as an IDX file, gzip-compressed when ``path`` ends
    in ``.gz`` (deterministic: no name or time in the gzip header).
    Atomic."""
    data = encode_idx(array)
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic.write_bytes(path, data)
