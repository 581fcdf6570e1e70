"""Fetch cuDNN's headers and its API library libcudnn.so.N (~1 MB in all)
from NVIDIA's nvidia-cudnn-cu13 wheel (requirements-cudnn.txt) into DIR/include
and DIR/lib, for tests/test_cuda_compile.py's cuDNN compile check on machines
without a cuDNN build. The wheel itself (~520 MB, 940 MB unpacked, nearly all
of it the engine libraries that libcudnn.so.N loads at run time) is downloaded
to a temporary folder and deleted. A cuDNN build (tools/setup.sh --cuda
--cudnn) installs the whole wheel into the venv instead.

usage: python tools/cudnn_headers.py DIR
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(dest):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--no-deps", "-d", tmp, "-r", os.path.join(REPO, "requirements-cudnn.txt")],
                       check=True)
        wheel, = glob.glob(os.path.join(tmp, "nvidia_cudnn_cu*.whl"))
        part = dest.rstrip("/") + ".tmp"
        shutil.rmtree(part, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                m = re.fullmatch(r"nvidia/cudnn/(include/\w+\.h|lib/libcudnn\.so\.\d+)", name)
                if m:
                    os.makedirs(os.path.dirname(os.path.join(part, m.group(1))), exist_ok=True)
                    with z.open(name) as src, open(os.path.join(part, m.group(1)), "wb") as out:
                        shutil.copyfileobj(src, out)
    if not os.path.exists(os.path.join(part, "include", "cudnn_version.h")):
        sys.exit(f"cudnn_headers: no cudnn_version.h in {os.path.basename(wheel)}")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(part, dest)
    print(f"cudnn_headers: {os.path.basename(wheel)}: headers and API library in {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
