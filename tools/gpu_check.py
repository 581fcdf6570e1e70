#!/usr/bin/env python3
"""The one prepared device check of issue 16 (run by tools/gpu_check.sh; see
there). Standard library only (python3 3.12 on the GPU machine has no
recon-dec); PyTorch is used, in child processes, where the python given by
--python has it.

Every step is time-boxed (its own limit, and never past the whole run's
--budget); a failed or timed-out step is recorded and the rest go on.
OUT/gpu_check.json is rewritten after each step, OUT/log.txt holds every
command's output."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


# upstream suites typed on TestDtypes alone that test GPU code only
GPU_ONLY_DTYPE_SUITES = {"Im2colKernelTest"}


def select_suites(listing, ours, want_ours, cpu):
    """gtest filter patterns ("Suite/2.*") from `test.testbin --gtest_list_tests`:
    the suites that are (want_ours) or are not ours, on the GPU or (cpu) on the CPU."""
    suites = {}  # base name -> its instances' names, in listed order
    for line in listing.splitlines():
        entry = line.partition("#")[0].strip()
        if line.startswith(" ") or not entry.endswith("."):
            continue  # a test name, or something the binary printed
        suite = entry.rstrip(".")
        base = [q for q in suite.split("/") if not q.isdigit()][-1]
        suites.setdefault(base, []).append(suite)
    patterns = []
    for base, instances in suites.items():
        if (base in ours) != want_ours:
            continue
        # Caffe's bundled gtest lists no TypeParam, so the device is read off the
        # instance count: TestDtypesAndDevices is CPU float, CPU double, GPU float,
        # GPU double (4); a CuDNN* suite of TestDtypes (2) is GPU only; *GPU* suites too.
        if "GPU" in base:
            gpu_instances = instances
        elif len(instances) == 4 and all("/" in q for q in instances):
            gpu_instances = instances[2:]  # also CuDNNDeconvolutionLayerTest's
        elif base.startswith("CuDNN") or base in GPU_ONLY_DTYPE_SUITES:
            gpu_instances = instances
        else:
            gpu_instances = []
        patterns += [f"{q}.*" for q in instances if (q in gpu_instances) != cpu]
    return patterns


class Check:
    def __init__(self, bundle, out, cpu, budget, python):
        self.bundle, self.out, self.cpu, self.python = bundle, out, cpu, python
        self.inputs = os.path.join(bundle, "inputs")
        self.deadline = time.time() + budget
        self.t0 = time.time()
        self.log = open(os.path.join(out, "log.txt"), "a")
        self.result = {"mode": "cpu" if cpu else "gpu", "bundle": bundle,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": budget, "steps": {}}
        if not os.path.exists(os.path.join(self.inputs, "inputs.json")):
            sys.exit(f"gpu_check: {self.inputs}/inputs.json missing: a bundle made with --no-inputs?")
        with open(os.path.join(bundle, "BUNDLE.json")) as f:
            self.result["bundle_info"] = json.load(f)
        with open(os.path.join(self.inputs, "inputs.json")) as f:
            self.info = json.load(f)
        self.env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1",
                        OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "4"),
                        NVIDIA_TF32_OVERRIDE="0")  # fp32 without TF32, both frameworks
        self.gpu = [] if cpu else ["-gpu", "0"]
        # files that need not come back (the device tool returns at most 8 from OUT)
        self.scratch = tempfile.mkdtemp(prefix="gpu_check.")

    # ------------------------------------------------------------ plumbing
    def save(self):
        self.result["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = os.path.join(self.out, "gpu_check.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.result, f, indent=1)
        os.replace(tmp, os.path.join(self.out, "gpu_check.json"))

    def sh(self, cmd, timeout, cwd=None, env=None):
        """Runs cmd (list) in its own process group; (rc, output); rc None
        when it ran past `timeout` (then the group is killed)."""
        self.log.write(f"\n$ (cd {cwd or os.getcwd()} && {' '.join(cmd)})   [limit {timeout:.0f} s]\n")
        self.log.flush()
        start = time.time()
        p = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=max(timeout, 1))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            rc = None
        kept = out if len(out) < 300_000 else (  # log.txt stays well under the 16 MiB that come back
            out[:50_000] + f"\n[... {len(out) - 300_000} characters left out ...]\n" + out[-250_000:])
        self.log.write(kept + f"\n[rc {rc}, {time.time() - start:.1f} s]\n")
        self.log.flush()
        return rc, out

    def caffe(self, args, timeout, cwd=None):
        return self.sh([os.path.join(self.bundle, "run"), "caffe", *args], timeout, cwd=cwd or self.inputs)

    def step(self, name, limit, fn):
        limit *= 3 if self.cpu else 1  # a slow (or shared) CPU must not fail the dry run
        left = self.deadline - time.time()
        rec = {"limit_s": round(min(limit, max(left, 0)), 1)}
        self.result["steps"][name] = rec
        if left < 5:
            rec.update(status="skipped", reason="no time left in the budget")
            self.save()
            return
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {name} (limit {rec['limit_s']:.0f} s)", flush=True)
        start = time.time()
        try:
            details = fn(min(limit, left)) or {}
            rec.update(details)
            rec.setdefault("status", "ok")
        except StepFailed as e:
            rec.update(e.details, status="failed", reason=str(e))
        except Exception as e:  # noqa: BLE001 - a broken step must not stop the others
            rec.update(status="failed", reason=f"{type(e).__name__}: {e}")
        rec["seconds"] = round(time.time() - start, 1)
        print(f"[gpu_check] {name}: {rec['status']}"
              + (f" ({rec.get('reason')})" if rec.get("reason") else ""), flush=True)
        self.save()

    # ------------------------------------------------------------ steps
    def loaded_libraries(self):
        """Where each shared library of `caffe` comes from on this machine
        (the loader's own trace): the bundle, CUDA's wheels/toolkit, the system."""
        env = dict(self.env, LD_DEBUG="libs")
        rc, out = self.sh([os.path.join(self.bundle, "run"), "caffe", "--version"], 30, env=env)
        paths = sorted(set(re.findall(r"calling init: (.*\S)", out)))
        return {"rc": rc, "from_bundle": [os.path.basename(p) for p in paths if p.startswith(self.bundle + "/")],
                "from_elsewhere": [p for p in paths if not p.startswith(self.bundle + "/")],
                "not_found": sorted(set(re.findall(r"error while loading shared libraries: (\S+)", out)))}

    def variant(self):
        """Which build the launcher runs here: {"cudnn": bool, "line": its
        words}. A cuDNN bundle falls back to its build without cuDNN when
        libcudnn does not load (tools/gpu_bundle.py's launcher)."""
        if "variant" not in self.result:
            rc, out = self.sh([os.path.join(self.bundle, "run"), "--variant"], 60)
            line = out.strip().splitlines()[-1] if rc == 0 and out.strip() else f"unknown (run --variant: rc {rc})"
            self.result["variant"] = {"cudnn": line == "cudnn", "line": line}
        return self.result["variant"]

    def device_query(self, limit):
        self.variant()
        self.result["libraries_loaded"] = self.loaded_libraries()
        if self.cpu:
            rc, out = self.caffe(["--version"], limit)
            return {"status": "ok" if rc == 0 else "failed", "note": "--cpu: no device; caffe --version",
                    "output": out.strip()[-500:]}
        info = {}
        rc, out = self.sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                           "--format=csv,noheader"], min(limit, 15))
        info["nvidia_smi"] = out.strip()
        rc, out = self.caffe(["device_query", "-gpu", "0"], limit)
        info["device_query"] = "\n".join(l.split("] ", 1)[-1] for l in out.splitlines() if "] " in l)[-3000:]
        if rc != 0:
            raise StepFailed(f"caffe device_query exited {rc}", info)
        return info

    def gtests(self, which, limit):
        listed = self.sh([os.path.join(self.bundle, "run"), "test.testbin", "--gtest_list_tests"],
                         60, cwd=self.bundle)[1]
        ours = set(self.info["ext_suites"])
        patterns = select_suites(listed, ours, which == "ours", self.cpu)
        if not patterns:
            raise StepFailed("no test selected (is this a CPU-only test binary?)", {})
        xml = os.path.join(self.out, f"gtest_{which}.xml")
        rc, out = self.run_gtest(patterns, xml, limit)
        passed = re.search(r"\[  PASSED  \] (\d+) test", out)
        failed = sorted(set(re.findall(r"\[  FAILED  \] (\S+)", out)))
        details = {"suites": len(patterns), "passed": int(passed.group(1)) if passed else 0,
                   "cudnn_suites": sorted(p[:-2] for p in patterns if p.startswith("CuDNN")),
                   "ok_lines": len(re.findall(r"\[       OK \] ", out)),  # what passed before a timeout
                   "failed": failed}
        if os.path.exists(xml):
            root = ET.parse(xml).getroot()
            details["tests"] = int(root.get("tests", 0))
            details["xml_failures"] = int(root.get("failures", 0))
            details["gtest_time_s"] = float(root.get("time", 0) or 0)
        if rc is None:
            raise StepFailed(f"ran past {limit:.0f} s", details)
        if rc != 0 or failed:
            raise StepFailed(f"test.testbin exited {rc}, {len(failed)} failed", details)
        return details

    def run_gtest(self, patterns, xml, limit):
        """test.testbin over `patterns`, one process: (rc, output) as sh() gives
        them, and the XML report of the tests that ran. One process on purpose:
        8 gtest shards side by side on the H100 time-sliced its contexts, and a
        gradient check that takes 0.9 s alone took 53 s there (2026-11-27)."""
        part = os.path.join(self.scratch, os.path.basename(xml))
        if os.path.exists(part):
            os.remove(part)
        rc, out = self.sh([os.path.join(self.bundle, "run"), "test.testbin",
                           "--gtest_filter=" + ":".join(patterns), f"--gtest_output=xml:{part}"],
                          limit, cwd=self.bundle)
        if os.path.exists(part):  # written at the end: absent after a timeout
            root = ET.parse(part).getroot()
            for suite in list(root):  # this gtest also lists the filtered-out tests, as "notrun"
                for case in [c for c in suite if c.get("status") != "run"]:
                    suite.remove(case)
                if not len(suite):
                    root.remove(suite)
            cases = root.findall("testsuite/testcase")
            root.set("tests", str(len(cases)))
            root.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
            ET.ElementTree(root).write(xml)
        return rc, out

    @staticmethod
    def outputs(out):
        """The `name = value` outputs that `caffe test` prints at its end."""
        tail = out[out.rfind("Loss:"):] if "Loss:" in out else out
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r"\] ([\w/:@.\[\]-]+) = ([-+0-9.eE]+|nan|inf)", tail)}

    def gpu_vs_cpu(self, limit):
        res = {}
        bad = []
        for v in self.info["variants"]:
            args = ["test", f"-model=svgg/{v}/train_val.prototxt",
                    f"-weights=svgg/{v}/init.caffemodel", "-iterations=2"]
            rc1, cpu_out = self.caffe(args, limit / 4)
            rc2, dev_out = self.caffe(args + self.gpu, limit / 4)
            a, b = self.outputs(cpu_out), self.outputs(dev_out)
            diffs = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-6) for k in a if k in b}
            res[v] = {"cpu": a, "device": b, "max_rel_diff": max(diffs.values()) if diffs else None}
            if rc1 != 0 or rc2 != 0 or not a or set(a) != set(b) or max(diffs.values()) > 1e-3:
                bad.append(v)
        if bad:
            raise StepFailed(f"outputs differ or a run failed: {bad}", {"nets": res})
        return {"nets": res, "tolerance_rel": 1e-3}

    def train(self, limit):
        res, bad = {}, []
        iters = self.info["train_iters"] if not self.cpu else 30
        for v in self.info["variants"]:
            src = os.path.join(self.inputs, "train", f"{v}_solver.prototxt")
            text = re.sub(r"(?m)^max_iter:.*$", f"max_iter: {iters}", open(src).read())
            text = re.sub(r'(?m)^net: "(.*)"', lambda m: f'net: "{os.path.join(self.inputs, m.group(1))}"', text)
            solver = os.path.join(self.scratch, f"train_{v}_solver.prototxt")
            with open(solver, "w") as f:
                f.write(text)
            rc, out = self.caffe(["train", f"-solver={solver}", *self.gpu], limit / len(self.info["variants"]))
            losses = [float(x) for x in re.findall(r"Iteration \d+ \([^)]*\), loss = ([-+0-9.eE]+|nan)", out)]
            if not losses:
                losses = [float(x) for x in re.findall(r"Iteration \d+, loss = ([-+0-9.eE]+|nan)", out)]
            speed = re.findall(r"Iteration \d+ \(([0-9.]+) iter/s", out)
            q = max(len(losses) // 4, 1)
            first, last = (sum(losses[:q]) / q, sum(losses[-q:]) / q) if losses else (None, None)
            res[v] = {"iterations": iters, "losses": losses, "first_quarter_mean": first,
                      "last_quarter_mean": last, "iter_per_s_last": float(speed[-1]) if speed else None,
                      "rc": rc}
            if rc != 0 or not losses or not last < first:
                bad.append(v)
        if bad:
            raise StepFailed(f"did not train, or the loss did not fall: {bad}", {"nets": res})
        return {"nets": res}

    @staticmethod
    def parse_time(out):
        r = {}
        for key, name in (("forward_ms", "Average Forward pass"), ("backward_ms", "Average Backward pass"),
                          ("forward_backward_ms", "Average Forward-Backward")):
            m = re.search(name + r": ([0-9.]+) ms", out)
            r[key] = float(m.group(1)) if m else None
        layers = {}
        for m in re.finditer(r"\]\s+(\S+)\s+(forward|backward): ([0-9.]+) ms", out):
            layers.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
        r["layers"] = layers
        return r

    def caffe_time(self, limit):
        """caffe time of VGG16 baseline and SWWAE-all: the default engine
        (cuDNN in a cuDNN build) and, where the inputs have it, the copy with
        engine: CAFFE on every layer (im2col + cuBLAS: the same build without
        cuDNN)."""
        batch = 1 if self.cpu else 32
        iters = 1 if self.cpu else 10
        cudnn = self.variant()["cudnn"]
        runs = []
        for v in self.info["variants"]:
            runs.append((v, f"time/vgg16-{v}_b{batch}.prototxt", None))
            ec = f"time/vgg16-{v}_b{batch}_engine-caffe.prototxt"
            if os.path.exists(os.path.join(self.inputs, ec)):
                runs.append((v, ec, "engine_caffe"))
        res, bad, start = {}, [], time.time()
        for i, (v, model, kind) in enumerate(runs):
            left = limit - (time.time() - start)
            rc, out = self.caffe(["time", f"-model={model}", f"-iterations={iters}", *self.gpu],
                                 left / (len(runs) - i))
            t = self.parse_time(out)
            t.update(batch=batch, iterations=iters, rc=rc, model=model)
            # DummyData refills its gaussian on the CPU every forward (25-42 ms of
            # the 2026-11-27 H100 run); PyTorch's side times the network alone
            data = t["layers"].get("data", {})
            if t["forward_backward_ms"] is not None:
                t["forward_backward_ms_without_data"] = (
                    t["forward_backward_ms"] - data.get("forward", 0) - data.get("backward", 0))
            if kind is None:
                res[f"vgg16-{v}"] = dict(t, engine="CUDNN (default)" if cudnn else "CAFFE (no cuDNN in this run)")
            else:
                net = res.setdefault(f"vgg16-{v}", {})
                net["engine_caffe"] = t
                net["forward_backward_ms_engine_caffe"] = t["forward_backward_ms"]
                if t.get("forward_backward_ms_without_data") and net.get("forward_backward_ms_without_data"):
                    net["speedup_cudnn"] = (t["forward_backward_ms_without_data"]
                                            / net["forward_backward_ms_without_data"])
            if rc != 0 or t["forward_backward_ms"] is None:
                bad.append(f"{v}{' (' + kind + ')' if kind else ''}")
        out = {"nets": res, "cudnn": cudnn, "variant": self.variant()["line"],
               "tf32": "off (NVIDIA_TF32_OVERRIDE=0)"}
        if bad:
            raise StepFailed(f"caffe time failed: {bad}", out)
        return out

    def unpool_bandwidth(self, limit):
        batch = 2 if self.cpu else 32
        n, c, h, w = self.info["unpool_input_shapes"][f"unpool_b{batch}"]
        rc, out = self.caffe(["time", f"-model=time/unpool_b{batch}.prototxt", "-iterations=20", *self.gpu], limit)
        t = self.parse_time(out)
        if rc != 0 or "unpool_known" not in t["layers"]:
            raise StepFailed(f"caffe time exited {rc}", {"time": t})
        x = n * c * h * w * 4              # bytes of the pooling input = the unpooled output
        p = x // 4                         # bytes of the pooled values (and of the mask)
        copy_ms = t["layers"]["copy"]["forward"]
        copy_bw = 2 * x / (copy_ms * 1e-3) / 1e9 if copy_ms else None
        res = {"input_shape": [n, c, h, w], "copy": {"ms": copy_ms, "GB_per_s": copy_bw,
                                                     "bytes": 2 * x}}
        # minimum traffic: forward reads values (+ switches) and writes the
        # whole output; backward reads the switches (known) and one gradient
        # value per pooled value, and writes the pooled gradient
        traffic = {"unpool_known": {"forward": 2 * p + x, "backward": 3 * p},
                   "unpool_fixed": {"forward": p + x, "backward": 2 * p}}
        for layer, passes in traffic.items():
            for direction, nbytes in passes.items():
                ms = t["layers"][layer].get(direction)
                bw = nbytes / (ms * 1e-3) / 1e9 if ms else None
                res[f"{layer}_{direction}"] = {"ms": ms, "bytes": nbytes, "GB_per_s": bw,
                                               "fraction_of_copy": bw / copy_bw if bw and copy_bw else None}
        res["pool_forward_ms"] = t["layers"].get("pool", {}).get("forward")
        return res

    def pytorch(self, limit):
        res, start = {}, time.time()
        probe = self.sh([self.python, "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"], 60)
        if probe[0] is None:
            raise StepFailed(f"{self.python}: importing torch ran past 60 s", res)
        if probe[0] != 0:
            return {"status": "skipped", "reason": f"{self.python} has no torch"}
        res["torch"] = probe[1].strip().splitlines()[-1]
        device = "cpu" if self.cpu else "cuda"
        batch = 1 if self.cpu else 32
        bench = os.path.join(REPO, "bench", "bench_vs_pytorch.py")
        # standalone caffe_pb2 and the bundle's protobuf runtime (pure Python: built for 3.11, run by 3.12)
        env = dict(self.env, PYTHONPATH=os.path.join(self.bundle, "python"),
                   PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
        if os.path.exists(bench):
            rc, helptext = self.sh([self.python, bench, "--help"], 60, env=env)
            if rc == 0 and "--torch-only" in helptext and "--device" in helptext:
                for v in self.info["variants"]:
                    j = os.path.join(self.out, f"torch_vgg16-{v}.json")
                    iters, warmup = ("10", "3") if device == "cuda" else ("1", "0")  # --cpu: VGG16 is ~5 s/it.
                    rc, out = self.sh([self.python, bench, "--torch-only", "--device", device, "--iters", iters,
                                       "--warmup", warmup, "--json", j,
                                       os.path.join(self.inputs, "time", f"vgg16-{v}_b{batch}.prototxt")],
                                      limit / 3, env=env)
                    if rc == 0 and os.path.exists(j):
                        row = json.load(open(j))[0]
                        res[f"bench_vgg16-{v}"] = row
                        # beside caffe time's Average Forward-Backward (same net, batch, device)
                        ct = self.result["steps"].get("caffe_time", {}).get("nets", {}).get(f"vgg16-{v}", {})
                        res[f"bench_vgg16-{v}"]["caffe_forward_backward_ms"] = {
                            "default_engine": ct.get("forward_backward_ms_without_data"),
                            "engine_caffe": ct.get("engine_caffe", {}).get("forward_backward_ms_without_data"),
                            "note": "without the DummyData layer's CPU refill"}
                    else:
                        res[f"bench_vgg16-{v}"] = {"status": "failed", "rc": rc, "tail": out[-1500:]}
            else:
                res["bench"] = "skipped: bench/bench_vs_pytorch.py has no --torch-only --device mode " \
                               "(the Caffe side needs pycaffe, which cannot load here)"
        else:
            res["bench"] = "skipped: no bench/bench_vs_pytorch.py"
        # Plain PyTorch VGG16 (the baseline's graph) and a device copy, same process
        size = 64 if self.cpu else 224  # --cpu: a smaller image, the script is what is checked
        rc, out = self.sh([self.python, "-c", TORCH_SNIPPET, device, str(batch), str(size)],
                          max(limit - (time.time() - start), 10), env=env)
        try:
            res["plain_torch"] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(f"plain PyTorch timing exited {rc}", res)
        return res


TORCH_SNIPPET = r"""
import json, sys, time, torch
dev, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']
layers, c = [], 3
for v in cfg:
    if v == 'M':
        layers.append(torch.nn.MaxPool2d(2, 2))
    else:
        layers += [torch.nn.Conv2d(c, v, 3, padding=1), torch.nn.ReLU(inplace=True)]; c = v
net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(7), torch.nn.Flatten(), torch.nn.Linear(512 * 49, 4096), torch.nn.ReLU(True),
                          torch.nn.Dropout(), torch.nn.Linear(4096, 4096), torch.nn.ReLU(True),
                          torch.nn.Dropout(), torch.nn.Linear(4096, 1000)).to(dev)
x = torch.randn(batch, 3, size, size, device=dev); y = torch.zeros(batch, dtype=torch.long, device=dev)
loss_fn = torch.nn.CrossEntropyLoss()
sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
def step():
    net.zero_grad(set_to_none=True); loss_fn(net(x), y).backward()
iters = 10 if dev == 'cuda' else 1
for _ in range(2 if dev == 'cuda' else 1): step()
sync(); t = time.perf_counter()
for _ in range(iters): step()
sync(); fb = (time.perf_counter() - t) / iters * 1e3
with torch.no_grad():
    sync(); t = time.perf_counter()
    for _ in range(iters): net(x)
    sync(); fw = (time.perf_counter() - t) / iters * 1e3
res = {"net": "vgg16 (plain torch.nn, baseline graph)", "batch": batch, "size": size, "device": dev,
       "forward_ms": fw, "forward_backward_ms": fb, "tf32": False}
if dev == 'cuda':
    res["gpu"] = torch.cuda.get_device_name(0)
    a = torch.empty(32 * 64 * 224 * 224, device=dev); b = torch.empty_like(a)
    for _ in range(3): b.copy_(a)
    sync(); t = time.perf_counter()
    for _ in range(20): b.copy_(a)
    sync(); ms = (time.perf_counter() - t) / 20 * 1e3
    res["d2d_copy"] = {"bytes": 2 * a.numel() * 4, "ms": ms, "GB_per_s": 2 * a.numel() * 4 / ms / 1e6}
print(json.dumps(res))
"""


class StepFailed(Exception):
    def __init__(self, msg, details):
        super().__init__(msg)
        self.details = details


def main():
    ap = argparse.ArgumentParser(description="The device check of issue 16: see tools/gpu_check.sh")
    ap.add_argument("bundle")
    ap.add_argument("out")
    ap.add_argument("--cpu", action="store_true", help="the same steps on the CPU (no -gpu): a dry run")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default 330; --cpu: 900, "
                    "every step's limit x3)")
    ap.add_argument("--python", default="python3", help="python with PyTorch (default python3)")
    ap.add_argument("--steps", help="comma-separated subset of the steps")
    a = ap.parse_args()
    bundle = os.path.abspath(a.bundle)
    os.makedirs(a.out, exist_ok=True)
    budget = a.budget or (900 if a.cpu else 330)
    c = Check(bundle, os.path.abspath(a.out), a.cpu, budget, a.python)
    steps = [("device_query", 30, c.device_query),
             ("gtest_ours", 90, lambda l: c.gtests("ours", l)),
             ("gpu_vs_cpu", 40, c.gpu_vs_cpu),
             ("train", 50, c.train),
             ("caffe_time", 100, c.caffe_time),
             ("unpool_bandwidth", 25, c.unpool_bandwidth),
             ("pytorch", 90, c.pytorch),
             # last: what has not finished at its limit is reported test by test
             ("gtest_upstream", 150, lambda l: c.gtests("upstream", l))]
    wanted = set(a.steps.split(",")) if a.steps else None
    for name, limit, fn in steps:
        if wanted is None or name in wanted:
            c.step(name, limit, fn)
    c.save()
    bad = [k for k, v in c.result["steps"].items() if v["status"] == "failed"]
    print(f"[gpu_check] done in {time.time() - c.t0:.0f} s: {os.path.join(a.out, 'gpu_check.json')}"
          + (f"; failed: {', '.join(bad)}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
