"""Caffe's command-line tools, installed beside the venv's Python by
tools/setup.sh (cmake/LinkIntoVenv.cmake)."""
import os
import shutil
import sys

from ..errors import ReconDecError


def tool_path(name):
    """Path of Caffe tool ``name`` next to the running interpreter."""
    return os.path.join(os.path.dirname(sys.executable), name)


def caffe_binary():
    """The ``caffe`` tool: $RECON_DEC_CAFFE, the venv's, or on PATH."""
    env = os.environ.get("RECON_DEC_CAFFE")
    cands = [env] if env else []
    cands += [tool_path("caffe"), shutil.which("caffe")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise ReconDecError("caffe: the caffe tool was not found (build it, or set RECON_DEC_CAFFE)")
