"""Atomic file writes: a reader (or an interrupted run) never sees a
half-written file, because the content goes to a temporary file in the same
directory that is then renamed over the target."""
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path):
    """Yields a temporary path next to ``path``; renames it onto ``path`` when
    the block finishes without an exception, removes it otherwise."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text):
    write_bytes(path, text.encode())
