"""tools/gpu_bundle.sh's relocation, proved on the CPU build (issue 16 part
2): the setup's build/ is packed (--cpu, as is: no rebuild), the bundle is
moved elsewhere, and its `caffe` trains a tiny generated net (the demo's small
VGG on raw LMDB digits, made by tools/gpu_check_inputs.py) in a scrubbed
environment; the dynamic loader's own trace (LD_DEBUG=libs) shows that every
shared library it loaded came from the bundle, except glibc, libstdc++,
libgcc_s and libz, which every target has. No root, no namespaces."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import BUILD, REPO

SYSTEM = re.compile(r"^(ld-linux-x86-64\.so|libc\.so|libm\.so|libmvec\.so|libpthread\.so|libdl\.so|"
                    r"librt\.so|libutil\.so|libresolv\.so|libstdc\+\+\.so|libgcc_s\.so|libz\.so)")
MAX = {"GLIBC": (2, 36), "GLIBCXX": (3, 4, 30), "CXXABI": (1, 3, 13)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    if not (BUILD / "caffe-build" / "tools" / "caffe").exists():
        pytest.fail(f"{BUILD}/caffe-build/tools/caffe missing: run tools/setup.sh")
    tmp = tmp_path_factory.mktemp("bundle")
    env = dict(os.environ, GLOG_minloglevel="2", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "tools/gpu_check_inputs.py"), str(tmp / "inputs"),
                           "--variants", "baseline", "--no-time-nets"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_bundle.sh"), "--cpu", "--no-tar",
                           "--inputs", str(tmp / "inputs"), str(tmp / "packed")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # relocate: another folder, another name; the inputs' copy goes away too
    (tmp / "elsewhere").mkdir()
    moved = tmp / "elsewhere" / "moved bundle"  # a space in the path, too
    os.rename(tmp / "packed", moved)
    subprocess.run(["rm", "-rf", str(tmp / "inputs")], check=True)
    return moved


def scrubbed_run(bundle, args, cwd, extra=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GLOG_logtostderr": "1",
           "OPENBLAS_NUM_THREADS": "1", **(extra or {})}
    return subprocess.run([str(bundle / "run"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bundle_layout(bundle):
    for f in ("run", "bin/caffe", "bin/test.testbin", "MANIFEST.tsv", "BUNDLE.json",
              "python/caffe/proto/caffe_pb2.py", "src/caffe/test/test_data", "inputs/inputs.json",
              "python/google/protobuf/text_format.py"):
        assert (bundle / f).exists(), f
    # the protobuf runtime travels pure-Python (gpu_bundle.py checked caffe_pb2 loads with it)
    assert not list((bundle / "python").rglob("*.so")) and not (bundle / "python/google/__init__.py").exists()
    assert json.loads((bundle / "BUNDLE.json").read_text())["protobuf_python"]
    libs = sorted(p.name for p in (bundle / "lib").iterdir())
    assert any(n.startswith("libcaffe.so") for n in libs)
    assert not [n for n in libs if SYSTEM.match(n)], "a library every target has was packed"
    rows = [l.split("\t") for l in (bundle / "MANIFEST.tsv").read_text().splitlines()[1:]]
    assert {r[0] for r in rows} == {f"lib/{n}" for n in libs} | {f"bin/{p.name}" for p in (bundle / "bin").iterdir()}
    assert all(r[1] and int(r[2]) > 0 for r in rows)
    # Debian packages named for what dpkg knows (libglog, protobuf, ...)
    assert re.search(r"^lib/libglog\.so\.\S+\tlibgoogle-glog\S* ", "\n".join("\t".join(r) for r in rows), re.M)
    # $ORIGIN runpath instead of the build tree's
    dyn = subprocess.run(["readelf", "-d", str(bundle / "bin/caffe")], capture_output=True, text=True).stdout
    assert "[$ORIGIN/../lib]" in dyn and str(BUILD) not in dyn
    # no symbol newer than bookworm's glibc 2.36 / gcc 12
    for f in [*(bundle / "bin").iterdir(), *(bundle / "lib").iterdir()]:
        out = subprocess.run(["readelf", "-V", "--wide", str(f)], capture_output=True, text=True).stdout
        for name, num in re.findall(r"Name: (GLIBC|GLIBCXX|CXXABI)_([0-9.]+)", out):
            assert tuple(map(int, num.split("."))) <= MAX[name], f"{f.name}: {name}_{num}"


def test_relocated_caffe_trains_with_only_bundle_libraries(bundle):
    inputs = bundle / "inputs"
    solver = (inputs / "train" / "baseline_solver.prototxt").read_text()
    solver = re.sub(r"(?m)^max_iter:.*$", "max_iter: 30", solver)
    (inputs / "train" / "short.prototxt").write_text(solver)
    proc = scrubbed_run(bundle, ["caffe", "train", "-solver", "train/short.prototxt"], inputs,
                        {"LD_DEBUG": "libs"})
    out = proc.stderr
    assert proc.returncode == 0, out[-4000:]
    loaded = set(re.findall(r"calling init: (.*\S)", out))
    assert loaded, "LD_DEBUG=libs printed nothing (is this glibc's loader?)"
    foreign = [p for p in loaded
               if not p.startswith(str(bundle / "lib") + "/")
               and not (SYSTEM.match(os.path.basename(p)) and re.match(r"^(/usr)?/lib(64|/x86_64-linux-gnu)?/", p))]
    assert not foreign, f"loaded from outside the bundle: {sorted(foreign)}"
    from_bundle = {os.path.basename(p) for p in loaded if p.startswith(str(bundle))}
    assert any(n.startswith("libcaffe.so") for n in from_bundle)
    assert len(from_bundle) >= 10, sorted(from_bundle)
    losses = [float(x) for x in re.findall(r"Iteration \d+ \([^)]*\), loss = ([-+0-9.eE]+)", out)]
    assert len(losses) == 30, out[-3000:]
    q = len(losses) // 4
    assert sum(losses[-q:]) / q < sum(losses[:q]) / q, losses


def test_relocated_gtests_run(bundle):
    # test.testbin from the bundle, run from the bundle (its test_data)
    proc = scrubbed_run(bundle, ["test.testbin", "--gtest_filter=UnpoolingLayerTest*:-*GPU*"], bundle)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # every typed test of ours, for float and double (x2 devices in a CUDA build)
    typed = len(re.findall(r"^TYPED_TEST\(UnpoolingLayerTest,", (REPO / "caffe_ext/src/caffe/test/"
                                                                 "test_unpooling_layer.cpp").read_text(), re.M))
    m = re.search(r"\[  PASSED  \] (\d+) tests", proc.stdout)
    assert typed >= 12 and m and int(m.group(1)) in (2 * typed, 4 * typed), (typed, proc.stdout[-2000:])


def test_bundle_refuses_a_cuda_less_build_as_cuda(tmp_path):
    # --from a CPU build without --cpu: the packer says so instead of packing
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_bundle.sh"), "--from", str(BUILD), "--no-inputs",
                           "--no-tar", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "links no CUDA library" in proc.stderr


def test_gpu_check_dry_run_on_the_relocated_bundle(bundle, tmp_path):
    # tools/gpu_check.sh --cpu, the steps the quick inputs allow: the script,
    # its parsers and its JSON are exercised here; the GPU run uses the same
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), str(bundle), str(tmp_path / "out"),
                           "--cpu", "--steps", "device_query,gpu_vs_cpu,train,gtest_ours"],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = result["steps"]
    assert {k: v["status"] for k, v in steps.items()} == dict.fromkeys(
        ["device_query", "gpu_vs_cpu", "train", "gtest_ours"], "ok")
    net = steps["gpu_vs_cpu"]["nets"]["baseline"]
    assert set(net["cpu"]) >= {"loss", "accuracy/top-1"} and net["max_rel_diff"] == 0
    train = steps["train"]["nets"]["baseline"]
    assert len(train["losses"]) == 30 and train["last_quarter_mean"] < train["first_quarter_mean"]
    assert steps["gtest_ours"]["passed"] >= 100 and not steps["gtest_ours"]["failed"]
    assert (tmp_path / "out" / "log.txt").stat().st_size > 0
