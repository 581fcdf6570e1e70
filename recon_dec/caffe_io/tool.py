"""Caffe's command-line tools, installed beside the venv's Python by
tools/setup.sh (cmake/LinkIntoVenv.cmake)."""
import os
import re
import shutil
import subprocess
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


def check_gpus(spec, flag="--gpu"):
    """``spec`` ("0", "0,1", "all") as ``caffe -gpu`` takes it, checked
    against this Caffe (``caffe device_query``): a CPU-only build or a
    missing device is a one-line error here, not a Caffe abort later."""
    spec = str(spec).strip()
    if not re.fullmatch(r"all|\d{1,4}(,\d{1,4})*", spec):
        raise ReconDecError(f"{flag}: {spec!r} is not a GPU id, a list of ids (0,1) or all")
    ids = ["0"] if spec == "all" else spec.split(",")
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    for gpu in ids:
        try:
            proc = subprocess.run([caffe_binary(), "device_query", "-gpu", gpu], capture_output=True,
                                  text=True, errors="replace", env=env, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ReconDecError(f"{flag}: cannot query GPU {gpu} ({e})") from None
        if proc.returncode != 0:
            text = proc.stdout + proc.stderr
            if "CPU-only" in text:
                raise ReconDecError(f"{flag}: this Caffe was built without CUDA (CPU only); leave out {flag}")
            from .protos import fatal_reason
            raise ReconDecError(f"{flag}: GPU {gpu} is not usable ({fatal_reason(text, proc.returncode)})")
    return spec
