#!/usr/bin/env python3
"""Packs a Caffe build tree into a relocatable bundle (called by
tools/gpu_bundle.sh, which says what the bundle holds). Standard library
only: runs under the system python3 and under .venv's.

The runtime closure comes from `ldd` of every packed ELF; left out are the
libraries every target machine has (glibc, libstdc++, libgcc_s, libz) and,
in a CUDA bundle, the CUDA libraries (taken from the GPU machine's wheels or
toolkit at run time by the launcher `run`)."""
import argparse
import datetime
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile

# Present on every target (glibc's libraries, gcc's runtime, zlib).
SYSTEM = re.compile(r"^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libmvec\.so|"
                    r"libpthread\.so|libdl\.so|librt\.so|libutil\.so|libresolv\.so|libanl\.so|"
                    r"libBrokenLocale\.so|libnsl\.so|libstdc\+\+\.so|libgcc_s\.so|libz\.so)")
# From the GPU machine at run time (its driver, its CUDA 13 wheels/toolkit).
CUDA = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|curand|cudnn\w*|nccl|nvrtc|nvJitLink)\.so")
# Newest symbol versions allowed: bookworm's glibc 2.36 and gcc 12's runtime.
MAX_VERSIONS = {"GLIBC": (2, 36), "GLIBCXX": (3, 4, 30), "CXXABI": (1, 3, 13), "GCC": (12, 0, 0)}

PROGRAMS = {  # bundle name -> path in caffe-build/
    "caffe": "tools/caffe",
    "upgrade_net_proto_text": "tools/upgrade_net_proto_text",
    "test.testbin": "test/test.testbin",
}

LAUNCHER = r"""#!/bin/sh
# usage: BUNDLE/run PROGRAM [ARGS...]   PROGRAM: caffe, test.testbin, upgrade_net_proto_text
# Runs BUNDLE/bin/PROGRAM with the library path set for this command only
# (the bundle's lib/ first; in a CUDA bundle then the CUDA libraries of this
# machine: $RECON_DEC_CUDA_LIBS, the nvidia wheels of python3, /usr/local/cuda).
# test.testbin reads src/caffe/test/test_data relative to the current
# directory: run it from BUNDLE.
# A cuDNN bundle runs its cuDNN build when this machine's libcudnn loads
# (libcudnn is not carried: it comes with the CUDA wheels), else (or with
# RECON_DEC_CUDNN=0) its build without cuDNN in nocudnn/, where packed.
# `BUNDLE/run --variant` prints which: cudnn, no-cudnn: WHY, plain.
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { sed -n 2,12p "$0" >&2; exit 2; }
prog=$1; shift
path=$here/lib bin=$here/bin variant=plain
if [ "@CUDA@" = 1 ]; then
  wheels=$(python3 -c 'import glob, os, nvidia
for p in nvidia.__path__:
    for d in sorted(glob.glob(os.path.join(p, "*", "lib"))): print(d)' 2>/dev/null)
  for d in ${RECON_DEC_CUDA_LIBS:-} $wheels /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
    [ -d "$d" ] && path=$path:$d
  done
  if [ -n "@CUDNN@" ]; then
    why=
    if [ "${RECON_DEC_CUDNN:-1}" = 0 ]; then why="RECON_DEC_CUDNN=0"
    elif ! LD_LIBRARY_PATH=$path python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' @CUDNN@ 2>/dev/null; then
      why="@CUDNN@ does not load"
    fi
    if [ -z "$why" ]; then variant=cudnn
    elif [ -d "$here/nocudnn" ]; then
      variant="no-cudnn: $why; the build without cuDNN" bin=$here/nocudnn/bin path=$here/nocudnn/lib:$path
    else variant="no-cudnn: $why, and this bundle has no build without cuDNN"
    fi
  fi
fi
[ "$prog" = --variant ] && { echo "$variant"; exit 0; }
LD_LIBRARY_PATH=$path exec "$bin/$prog" "$@"
"""
MAX_TAR = 64 * 2**20  # what the device tool carries


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ldd(path):
    """{needed name: resolved path or None} of the whole closure of `path`."""
    out = run(["ldd", path]).stdout
    deps = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s*=>\s*(\S+|not found)", line)
        if m:
            deps[m.group(1)] = None if m.group(2) in ("not", "not found") else m.group(2)
        else:
            m = re.match(r"\s*(\S+)\s+\(0x", line)
            if m:
                deps[os.path.basename(m.group(1))] = m.group(1)
    return deps


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def set_runpath(path, new):
    """Rewrites DT_RUNPATH/DT_RPATH of the ELF64 `path` in place to `new`
    when the old string is at least as long (as chrpath does); returns
    the old value, or None when there was none or it was too short."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        if data[:4] != b"\x7fELF" or data[4] != 2:
            return None
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        loads, dyn = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", data, phoff + i * phentsize)
            if p_type == 1:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:
                dyn = (p_offset, p_filesz)
        if dyn is None:
            return None
        entries = [struct.unpack_from("<qQ", data, dyn[0] + j)
                   for j in range(0, dyn[1], 16)]
        strtab = next((v for t, v in entries if t == 5), None)
        if strtab is None:
            return None
        base = next((off + strtab - va for va, off, sz in loads if va <= strtab < va + sz), None)
        for tag, val in entries:
            if tag in (15, 29):  # DT_RPATH, DT_RUNPATH
                start = base + val
                end = data.index(b"\0", start)
                old = data[start:end].decode()
                # another dynamic entry's string inside this one (tail merging)?
                if any(t in (1, 14) and start < base + v < end for t, v in entries):
                    return None
                if len(new) > len(old):
                    return None
                data[start:end] = new.encode() + b"\0" * (len(old) - len(new))
                f.seek(0)
                f.write(data)
                return old
    return None


def symbol_versions(path):
    """Required symbol versions (GLIBC_2.34, ...) of an ELF."""
    out = run(["readelf", "-V", "--wide", path]).stdout
    return set(re.findall(r"Name: ((?:GLIBC|GLIBCXX|CXXABI|GCC)_[0-9.]+)", out))


def version_tuple(v):
    name, num = v.split("_", 1)
    return name, tuple(int(x) for x in num.split("."))


def origins(paths):
    """{path: 'package version'} from dpkg -S (merged-/usr aware)."""
    result = {}
    queries = {}
    for p in paths:
        real = os.path.realpath(p)
        for q in {p, real, re.sub(r"^/lib/", "/usr/lib/", real), re.sub(r"^/usr/lib/", "/lib/", real),
                  re.sub(r"^/lib/", "/usr/lib/", p), re.sub(r"^/usr/lib/", "/lib/", p)}:
            queries.setdefault(q, p)
    out = run(["dpkg", "-S", *sorted(queries)]).stdout
    for line in out.splitlines():
        if ": " not in line:
            continue
        pkgs, f = line.split(": ", 1)
        if f in queries and queries[f] not in result and "diversion" not in pkgs:
            pkg = pkgs.split(",")[0].strip()
            ver = run(["dpkg-query", "-W", "-f=${Version}", pkg]).stdout.strip()
            result[queries[f]] = f"{pkg} {ver}".strip()
    return result


def pack_fallback(build, out, shared):
    """OUT/nocudnn/{bin,lib}: the programs of the build tree `build` (made
    without cuDNN) and the libraries of theirs that OUT/lib lacks or that
    differ by build (libcaffe); the rest they share with OUT/lib. Returns
    the manifest rows."""
    cb = os.path.join(build, "caffe-build")
    rows = []
    for d in ("bin", "lib"):
        os.makedirs(os.path.join(out, "nocudnn", d))
    for name, rel in PROGRAMS.items():
        src = os.path.join(cb, rel)
        if not os.path.exists(src):
            sys.exit(f"gpu_bundle: {src} missing: build the fallback tree first")
        shutil.copy2(src, os.path.join(out, "nocudnn", "bin", name))
        rows.append((f"nocudnn/bin/{name}", "built: recon-dec Caffe (without cuDNN)", src))
        for lib, path in ldd(src).items():
            if lib.startswith("libcudnn"):
                sys.exit(f"gpu_bundle: the fallback {src} links {lib}: build it without cuDNN")
            if SYSTEM.match(lib) or CUDA.match(lib) or (lib in shared and not lib.startswith("libcaffe")):
                continue
            if path is None:
                sys.exit(f"gpu_bundle: {src}: {lib} unresolved")
            dest = os.path.join(out, "nocudnn", "lib", lib)
            if not os.path.exists(dest):
                shutil.copyfile(path, dest)
                os.chmod(dest, 0o755)
                ours = os.path.realpath(path).startswith(os.path.realpath(cb) + "/")
                rows.append((f"nocudnn/lib/{lib}", "built: recon-dec Caffe (without cuDNN)" if ours else None, path))
    return rows


def carry_protobuf(src, python_dir):
    """Copies the protobuf runtime (src: a google/protobuf folder) into
    python_dir/google/protobuf, without compiled parts or caches: with
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python it is pure Python, so it runs
    under the GPU machine's python 3.12 though copied from 3.11. google/ gets no
    __init__.py (a namespace package, as pip installs it). Checks that protoc's
    caffe_pb2 loads with it, in a python that sees nothing else (the versions
    must agree: an older runtime refuses newer generated code). Returns its
    version."""
    dest = os.path.join(python_dir, "google", "protobuf")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    probe = ("import importlib.util, os, sys\n"
             "from google.protobuf import text_format, __version__, __file__ as f\n"
             "from google.protobuf.internal import api_implementation\n"
             "assert f.startswith(sys.argv[1]), f\n"
             "assert api_implementation.Type() == 'python', api_implementation.Type()\n"
             "spec = importlib.util.spec_from_file_location('caffe_pb2', os.path.join(sys.argv[1], 'caffe', "
             "'proto', 'caffe_pb2.py'))\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "n = text_format.Parse('layer { type: \"Convolution\" convolution_param { engine: CAFFE } }', "
             "m.NetParameter())\n"
             "assert n.layer[0].convolution_param.engine == m.ConvolutionParameter.CAFFE\n"
             "print(__version__)\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": python_dir,
           "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    r = run(["python3", "-s", "-c", probe, python_dir], env=env)
    if r.returncode:
        sys.exit(f"gpu_bundle: {dest}: protoc's caffe_pb2 does not load with the carried protobuf "
                 f"({(r.stderr.strip().splitlines() or ['?'])[-1]})")
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="build tree holding caffe-build/ and caffe-src/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--inputs", help="folder copied as OUT/inputs (tools/gpu_check_inputs.py)")
    ap.add_argument("--tar", action="store_true", help="also OUT.tar.xz")
    ap.add_argument("--fallback", help="a build tree without cuDNN (caffe-build/ inside), packed as OUT/nocudnn "
                    "(its programs and libcaffe): the launcher runs it where libcudnn does not load")
    ap.add_argument("--protobuf", help="a google/protobuf package folder (.venv's) copied as OUT/python/google/"
                    "protobuf: the GPU machine's python may have none (used pure-Python there)")
    a = ap.parse_args()

    cb = os.path.join(a.build, "caffe-build")
    out = os.path.abspath(a.out.rstrip("/"))
    if os.path.exists(out):
        shutil.rmtree(out)
    for d in ("bin", "lib", "src/caffe/test"):
        os.makedirs(os.path.join(out, d))

    programs = {}
    for name, rel in PROGRAMS.items():
        src = os.path.join(cb, rel)
        if not os.path.exists(src):
            sys.exit(f"gpu_bundle: {src} missing: build the tree first")
        programs[name] = src
    libcaffe = os.path.realpath(os.path.join(cb, "lib", "libcaffe.so"))

    # ---- the closure
    needed, skipped_system, cuda_libs, missing = {}, set(), set(), set()
    for src in programs.values():
        for name, path in ldd(src).items():
            if SYSTEM.match(name):
                skipped_system.add(name)
            elif CUDA.match(name):
                cuda_libs.add(name)
            elif path is None:
                missing.add(name)
            else:
                needed[name] = path
    if missing:
        sys.exit(f"gpu_bundle: unresolved libraries: {sorted(missing)}")
    if a.mode == "cpu" and cuda_libs:
        sys.exit(f"gpu_bundle: --cpu, but the build links CUDA: {sorted(cuda_libs)}")
    if a.mode == "cuda" and not cuda_libs:
        sys.exit("gpu_bundle: a CUDA bundle, but the build links no CUDA library")

    cudnn = sorted(n for n in cuda_libs if n.startswith("libcudnn"))
    manifest = []  # (file, origin, source)
    for name, src in programs.items():
        shutil.copy2(src, os.path.join(out, "bin", name))
        manifest.append((f"bin/{name}", "built: recon-dec Caffe" + (" (cuDNN)" if cudnn else ""), src))
    for name, path in sorted(needed.items()):
        shutil.copyfile(path, os.path.join(out, "lib", name))  # follows links
        os.chmod(os.path.join(out, "lib", name), 0o755)
        manifest.append((f"lib/{name}", None, path))
    if a.fallback:
        if not cudnn:
            sys.exit(f"gpu_bundle: --fallback {a.fallback}, but {a.build} links no libcudnn (nothing to fall back from)")
        manifest += pack_fallback(a.fallback, out, needed)

    # ---- strip, $ORIGIN runpaths
    elves = [os.path.join(out, f) for f, _, _ in manifest]
    subprocess.run(["strip", "--strip-unneeded", *elves], check=True)
    for f in elves:
        if "/nocudnn/" in f:  # its own libcaffe first, then the libraries both builds share
            set_runpath(f, "$ORIGIN/../lib:$ORIGIN/../../lib" if "/bin/" in f else "$ORIGIN:$ORIGIN/../../lib")
        else:
            set_runpath(f, "$ORIGIN/../lib" if "/bin/" in f else "$ORIGIN")

    # ---- what test.testbin reads, the launcher, python protobuf module
    shutil.copytree(os.path.join(a.build, "caffe-src", "src", "caffe", "test", "test_data"),
                    os.path.join(out, "src", "caffe", "test", "test_data"))
    with open(os.path.join(out, "run"), "w") as f:
        f.write(LAUNCHER.replace("@CUDA@", "1" if a.mode == "cuda" else "0").replace("@CUDNN@", cudnn[0] if cudnn else ""))
    os.chmod(os.path.join(out, "run"), 0o755)
    pb2 = os.path.join(out, "python", "caffe", "proto")
    os.makedirs(pb2)
    proto = os.path.join(a.build, "caffe-src", "src", "caffe", "proto", "caffe.proto")
    r = run(["protoc", f"--proto_path={os.path.dirname(proto)}", f"--python_out={pb2}", proto])
    if r.returncode:
        sys.exit(f"gpu_bundle: protoc failed: {r.stderr}")
    for d in (os.path.dirname(pb2), pb2):
        open(os.path.join(d, "__init__.py"), "w").close()
    protobuf_version = None
    if a.protobuf:
        protobuf_version = carry_protobuf(a.protobuf, os.path.join(out, "python"))
    if a.inputs:
        shutil.copytree(a.inputs, os.path.join(out, "inputs"), symlinks=False)

    # ---- symbol versions
    newest, too_new = {}, []
    for f in elves:
        for v in symbol_versions(f):
            name, num = version_tuple(v)
            if name not in newest or num > newest[name]:
                newest[name] = num
            if num > MAX_VERSIONS[name]:
                too_new.append(f"{os.path.relpath(f, out)}: {v}")
    if too_new:
        sys.exit("gpu_bundle: symbols newer than GLIBC 2.36 / gcc 12 (GLIBCXX_3.4.30):\n  "
                 + "\n  ".join(too_new))

    # ---- manifest
    orig = origins([src for _, o, src in manifest if o is None])
    blas_deb = os.path.join(a.build, "deps")
    rows = []
    for f, o, src in manifest:
        if o is None and os.path.realpath(src).startswith(os.path.realpath(cb) + "/"):
            o = "built: recon-dec Caffe"
        if o is None:
            o = orig.get(src)
        if o is None and os.path.realpath(src).startswith(os.path.realpath(blas_deb)):
            deb = [d for d in os.listdir(blas_deb) if d.endswith(".deb")]
            o = f"{deb[0].split('_')[0]} {deb[0].split('_')[1]} (apt-get download)" if deb else "deps"
        rows.append((f, o or f"not from a Debian package: {os.path.realpath(src)}",
                     os.path.getsize(os.path.join(out, f))))
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as m:
        m.write("file\torigin\tbytes\n")
        for row in rows:
            m.write("\t".join(map(str, row)) + "\n")

    total = 0
    for root, _, files in os.walk(out):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    git = run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"]).stdout.strip()
    info = {
        "mode": a.mode, "build": os.path.abspath(a.build), "git": git,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "programs": sorted(programs), "libraries": sorted(needed),
        "from_target_system": sorted(skipped_system),
        "from_target_cuda": sorted(cuda_libs),
        "newest_symbol_versions": {k: ".".join(map(str, v)) for k, v in sorted(newest.items())},
        "bytes": total, "protobuf_python": protobuf_version,
        "cudnn": cudnn, "fallback_without_cudnn": bool(a.fallback),
    }
    with open(os.path.join(out, "BUNDLE.json"), "w") as f:
        json.dump(info, f, indent=1)
    msg = f"gpu_bundle: {out}: {len(needed)} libraries + {len(programs)} programs, {total / 2**20:.1f} MiB"
    if a.tar:
        tar = out + ".tar.xz"
        env = dict(os.environ, XZ_OPT=os.environ.get("XZ_OPT", "-6 -T2"))
        subprocess.run(["tar", "-C", os.path.dirname(out), "-cJf", tar, os.path.basename(out)],
                       check=True, env=env)
        info["tar_bytes"] = os.path.getsize(tar)
        msg += f", {tar}: {info['tar_bytes'] / 2**20:.1f} MiB"
        with open(os.path.join(out, "BUNDLE.json"), "w") as f:
            json.dump(info, f, indent=1)
    print(msg)
    if info.get("tar_bytes", 0) > MAX_TAR:
        sys.exit(f"gpu_bundle: {out}.tar.xz is {info['tar_bytes'] / 2**20:.1f} MiB, over the 64 MiB the device "
                 "tool carries (without --fallback: one libcaffe less)")
    print("newest symbol versions: " + ", ".join(f"{k}_{v}" for k, v in info["newest_symbol_versions"].items()))


if __name__ == "__main__":
    main()
