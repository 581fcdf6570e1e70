"""Checked option values: every number and path an option takes is
validated where it is parsed, with a one-line error naming the option.

``arg_int``/``arg_float`` are argparse ``type=`` callables; ``check_*``
raise ReconDecError for values that come from elsewhere (STAGE=VALUE
lists, library calls). Integers are bounded by INT_MAX: Caffe's fields and
blob counts are 32-bit."""
import argparse
import math
import os

from .errors import ReconDecError

INT_MAX = 2 ** 31 - 1
FLT_MAX = 3.4e38          # Caffe's float fields
MAX_IMAGE_SIDE = 65535    # image sizes, crops, shorter edges (JPEG's own limit is 65535)


def _num(x):
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(low, high, low_open=False):
    lo = "" if low is None else (f"> {_num(low)}" if low_open else f">= {_num(low)}")
    hi = "" if high is None else f"<= {_num(high)}"
    return " and ".join(x for x in (lo, hi) if x)


def check_int(value, flag, low=1, high=INT_MAX):
    """``value`` (an int, or text) as an int in [low, high]."""
    try:
        v = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        v = None
    if v is None or (isinstance(value, float) and value != v):
        raise ReconDecError(f"{flag}: {value!r} is not an integer")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ReconDecError(f"{flag}: {v} is out of range (must be {_range_text(low, high)})")
    return v


def check_float(value, flag, low=None, high=None, low_open=False):
    """``value`` as a finite float in [low, high] (``low_open``: > low)."""
    try:
        v = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        v = None
    if v is None:
        raise ReconDecError(f"{flag}: {value!r} is not a number")
    if not math.isfinite(v):
        raise ReconDecError(f"{flag}: {value!r} is not a finite number")
    if (low is not None and (v < low or (low_open and v == low))) or (high is not None and v > high):
        raise ReconDecError(f"{flag}: {v:g} is out of range (must be {_range_text(low, high, low_open)})")
    return v


def _argtype(check, name, **kw):
    def parse(text):
        try:
            return check(text, "value", **kw)
        except ReconDecError as e:
            raise argparse.ArgumentTypeError(str(e)[len("value: "):]) from None
    parse.__name__ = name
    return parse


def arg_int(low=1, high=INT_MAX):
    """argparse type: an int in [low, high]."""
    return _argtype(check_int, "int", low=low, high=high)


def arg_float(low=None, high=None, low_open=False):
    """argparse type: a finite float in [low, high] (``low_open``: > low)."""
    return _argtype(check_float, "float", low=low, high=high, low_open=low_open)


def numbers(text, flag):
    """"1,2.5,3" -> (1.0, 2.5, 3.0), each finite; ``flag`` names it in errors."""
    out = []
    for x in str(text).split(","):
        if x.strip():
            out.append(check_float(x.strip(), flag))
    if not out:
        raise ReconDecError(f"{flag}: no numbers in {text!r}")
    return tuple(out)


# --------------------------------------------------------------------------
# paths
def _nearest_existing(path):
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_parent_writable(path, flag):
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise ReconDecError(f"{path}: {parent} is not a directory ({flag})")
    import tempfile
    try:  # the real test (root passes every access() check)
        fd, probe = tempfile.mkstemp(prefix=".recon-dec-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReconDecError(f"{path}: cannot write in {parent} ({e.strerror}; {flag})") from None


def check_out_dir(path, flag="--out"):
    """An output directory: named, not an existing file, and creatable /
    writable where it would go. Returns the absolute path."""
    if path is None or not str(path).strip():
        raise ReconDecError(f"{flag}: an output directory is needed (got an empty path)")
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ReconDecError(f"{path}: exists and is not a directory ({flag})")
    _check_parent_writable(path, flag)
    return os.path.abspath(path)


def check_out_file(path, flag="--out"):
    """An output file (replaced atomically): named, not a directory or a
    device, in a writable directory. Returns the path."""
    if path is None or not str(path).strip():
        raise ReconDecError(f"{flag}: an output file is needed (got an empty path)")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ReconDecError(f"{path}: is a directory ({flag})")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ReconDecError(f"{path}: exists and is not a regular file ({flag})")
    _check_parent_writable(path, flag)
    return path


def check_in_file(path, flag, what="file"):
    """An input file that exists, is a regular file, is readable and not empty."""
    if path is None or not str(path).strip():
        raise ReconDecError(f"{flag}: a {what} is needed (got an empty path)")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReconDecError(f"{path}: {flag} {what} does not exist")
    if not os.path.isfile(path):
        raise ReconDecError(f"{path}: {flag} {what} is not a regular file")
    if os.path.getsize(path) == 0:
        raise ReconDecError(f"{path}: {flag} {what} is empty")
    if not os.access(path, os.R_OK):
        raise ReconDecError(f"{path}: {flag} {what} is not readable")
    return path


def stderr_tty():
    """Progress bars go only to a terminal: a piped stderr carries errors only."""
    import sys
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
