"""Atomic file writes: a reader (or an interrupted run) never sees a
half-written file, because the content goes to a temporary file in the same
directory that is then renamed over the target; and atomic trees
(``atomic_tree``): a whole directory built beside its target and renamed
into place."""
import os
import re
import shutil
import signal
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


# --------------------------------------------------------------------------
# whole directory trees
class TreeExists(Exception):
    """``atomic_tree``'s target exists, is not empty, and may not be replaced."""


def tree_state(path):
    """"absent", "empty" (an empty directory) or "full"."""
    if not os.path.lexists(path):
        return "absent"
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        return "empty"
    return "full"


@contextmanager
def _temporarily(change, undo, errors):
    """``old = change()`` for the block, then ``undo(old)``; nothing when
    ``change`` raises one of ``errors`` (e.g. not the main thread)."""
    try:
        old = change()
    except errors:
        old = None
    try:
        yield
    finally:
        if old is not None:
            undo(old)


def _signals_blocked():
    """SIGINT/SIGTERM wait until the block is done (the swap of two names
    must not stop half-way)."""
    return _temporarily(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}),
                        lambda old: signal.pthread_sigmask(signal.SIG_SETMASK, old),
                        (AttributeError, ValueError, OSError))


def _stop(signum, frame):
    raise KeyboardInterrupt("terminated")


def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) inside the block,
    so that cleanup code runs; the previous handler is restored after."""
    return _temporarily(lambda: signal.signal(signal.SIGTERM, _stop),
                        lambda old: signal.signal(signal.SIGTERM, old), ValueError)


def _mode_dir(path):
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)  # mkdtemp's 0700 would follow the rename


@contextmanager
def atomic_tree(path, replace=False):
    """Yields an empty temporary directory beside ``path`` to build a tree
    in; when the block finishes without an exception it becomes ``path`` in
    one rename. An existing non-empty ``path`` raises TreeExists unless
    ``replace`` (then it is swapped out and removed as a whole). On an
    exception, SIGINT or SIGTERM the temporary directory is removed and
    ``path`` is left as it was: readers see the old tree or the new one,
    never a part (a SIGKILL can leave a ``.NAME.PID.*.tmp`` directory beside
    it, never a partial ``path``; the next run removes it)."""
    path = os.path.abspath(os.fspath(path))
    if tree_state(path) == "full" and not replace:
        raise TreeExists(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _remove_orphans(path)
    with _sigterm_interrupts():
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=parent)
        try:
            _mode_dir(tmp)
            yield tmp
            with _signals_blocked():
                _swap_in(tmp, path, replace)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _remove_orphans(path):
    """Removes the temporary trees of ``path`` that a killed (SIGKILL) run
    of this machine left: ``.NAME.PID.*.tmp`` whose PID no longer runs."""
    parent, name = os.path.dirname(path), os.path.basename(path)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[^/]*\.(tmp|old)$")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for e in entries:
        m = pattern.match(e)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, e), ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


def _swap_in(tmp, path, replace):
    state = tree_state(path)
    if state == "full" and not replace:
        raise TreeExists(path)
    if state != "full":
        os.rename(tmp, path)  # onto nothing, or onto an empty directory
        return
    if _exchange(tmp, path):  # one step: tmp now holds the old tree
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".old",
                           dir=os.path.dirname(path))
    os.rename(path, os.path.join(old, "tree"))
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(os.path.join(old, "tree"), path)  # put the old tree back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a, b):
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False
    where the system cannot."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_files(root, files):
    """Writes {relative path: text} under ``root`` (a tree being built, so
    plain writes: the tree as a whole is what is atomic)."""
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
