"""Shared test setup: quiet Caffe, CPU mode, paths of the build."""
import os
import pathlib

os.environ.setdefault("GLOG_minloglevel", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
BUILD = REPO / "build"


@pytest.fixture(scope="session")
def caffe():
    import caffe as caffe_module
    caffe_module.set_mode_cpu()
    return caffe_module
