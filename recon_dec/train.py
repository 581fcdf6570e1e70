"""Training driver: runs ``caffe train`` for the stages of a plan.json
(docs/PLAN_FORMAT.md), resolving initial weights, resuming from the newest
snapshot, forwarding SIGINT/SIGTERM as "snapshot and stop", logging to
``<plan dir>/logs/step<N>.log`` and showing a progress bar parsed from
Caffe's log."""
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from . import prototxt
from .errors import ReconDecError

PLAN_FORMAT = "recon-dec-plan/1"

RE_ITER = re.compile(r"Iteration (\d+) \(([\d.eE+-]+|inf|nan) iter/s, .*loss = (\S+)")
RE_ITER_ANY = re.compile(r"Iteration (\d+)")
RE_TRAIN_OUT = re.compile(r"Train net output #\d+: (\S+) = (\S+)")
RE_TEST_OUT = re.compile(r"Test net output #\d+: (\S+) = (\S+)")
RE_FATAL = re.compile(r"^F\d{4,8} [\d:.]+\s+\d+ [^\]]+\] (.*)$")
RE_SNAPSHOT = re.compile(r"Snapshotting solver state to binary proto file (\S+)")


def caffe_binary():
    """The ``caffe`` tool: $RECON_DEC_CAFFE, the venv's, or on PATH."""
    env = os.environ.get("RECON_DEC_CAFFE")
    cands = [env] if env else []
    cands.append(os.path.join(os.path.dirname(sys.executable), "caffe"))
    cands.append(shutil.which("caffe"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise ReconDecError("caffe: the caffe tool was not found (build it, or set RECON_DEC_CAFFE)")


# --------------------------------------------------------------------------
# plan
def load_plan(plan_path):
    plan_path = os.path.abspath(os.fspath(plan_path))
    try:
        plan = json.load(open(plan_path))
    except OSError as e:
        raise ReconDecError(f"{plan_path}: {e.strerror}")
    except ValueError as e:
        raise ReconDecError(f"{plan_path}: not valid JSON ({e})")
    if plan.get("format") != PLAN_FORMAT:
        raise ReconDecError(f"{plan_path}: format is {plan.get('format')!r}, expected '{PLAN_FORMAT}'")
    if not plan.get("stages"):
        raise ReconDecError(f"{plan_path}: the plan has no stages")
    for s in plan["stages"]:
        for k in ("step", "solver", "snapshot_prefix", "output"):
            if k not in s:
                raise ReconDecError(f"{plan_path}: a stage lacks '{k}'")
    plan["_path"] = plan_path
    plan["_dir"] = os.path.dirname(plan_path)
    return plan


def _stage(plan, step):
    for s in plan["stages"]:
        if int(s["step"]) == int(step):
            return s
    have = ", ".join(str(s["step"]) for s in plan["stages"])
    raise ReconDecError(f"{plan['_path']}: no stage {step} (stages: {have})")


def _abs(plan, p):
    return p if os.path.isabs(p) else os.path.join(plan["_dir"], p)


def stage_output(plan, step):
    return _abs(plan, _stage(plan, step)["output"])


def stage_complete(plan, step):
    return os.path.isfile(stage_output(plan, step))


def resolve_weights(plan, stage):
    """The stage's init weights as absolute paths, in order; raises a
    one-line error for a missing prerequisite or file."""
    out = []
    step = stage["step"]
    for r in stage.get("requires", []):
        if not stage_complete(plan, r):
            raise ReconDecError(
                f"{plan['_path']}: stage {step} needs stage {r}'s output "
                f"{_stage(plan, r)['output']}, which does not exist; run "
                f"`recon-dec train {plan['_path']} --stage {r}` first")
    for init in stage.get("init", []):
        w = init["weights"]
        if w == "@pretrained":
            if not plan.get("pretrained"):
                raise ReconDecError(f"{plan['_path']}: stage {step} uses @pretrained but the plan has no 'pretrained'")
            path = _abs(plan, plan["pretrained"])
            if not os.path.isfile(path):
                raise ReconDecError(f"{path}: pretrained weights (stage {step}) do not exist")
        elif w.startswith("@stage:"):
            r = int(w.split(":", 1)[1])
            path = stage_output(plan, r)
            if not os.path.isfile(path):
                raise ReconDecError(
                    f"{plan['_path']}: stage {step} is initialised from stage {r}'s output "
                    f"{_stage(plan, r)['output']}, which does not exist; run "
                    f"`recon-dec train {plan['_path']} --stage {r}` first")
        else:
            path = _abs(plan, w)
            if not os.path.isfile(path):
                raise ReconDecError(f"{path}: initial weights for stage {step} do not exist")
        if path not in out:
            out.append(path)
    return out


def newest_snapshot(plan, stage):
    """(iteration, solverstate path) of the newest complete snapshot, or None."""
    prefix = _abs(plan, stage["snapshot_prefix"])
    found = []
    for p in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.search(r"_iter_(\d+)\.solverstate$", p)
        model = p[: -len(".solverstate")] + ".caffemodel"
        if m and os.path.getsize(p) > 0 and os.path.isfile(model):
            found.append((int(m.group(1)), p))
    # Caffe writes the caffemodel, then the solverstate: a solverstate that
    # parses means both are whole. A truncated one (killed mid-write) is
    # skipped in favour of the one before.
    for it, p in sorted(found, reverse=True):
        if _solverstate_ok(p):
            return it, p
    return None


def _solverstate_ok(path):
    try:
        from caffe.proto import caffe_pb2
        st = caffe_pb2.SolverState()
        with open(path, "rb") as f:
            st.ParseFromString(f.read())
        return st.HasField("iter")
    except Exception:
        return False


# --------------------------------------------------------------------------
# prototxt inspection (with pycaffe's protobuf classes)
def read_solver(path):
    from caffe.proto import caffe_pb2
    return prototxt.read_text(path, caffe_pb2.SolverParameter(), "solver prototxt")


def read_net(path):
    from caffe.proto import caffe_pb2
    return prototxt.read_text(path, caffe_pb2.NetParameter(), "net prototxt")


def _train_batch(net):
    for l in net.layer:
        if l.include and all(r.phase != 0 for r in l.include if r.HasField("phase")):
            continue
        if l.type == "ScaleJitterData":
            return l.scale_jitter_data_param.batch_size
        if l.type == "Data":
            return l.data_param.batch_size
        if l.type == "Input" and l.input_param.shape:
            return l.input_param.shape[0].dim[0]
    return None


def _check_sources(net, netpath, cwd):
    from . import data
    for l in net.layer:
        src = None
        if l.type == "ScaleJitterData" and l.scale_jitter_data_param.backend == 1:
            src = l.scale_jitter_data_param.source
        elif l.type == "Data" and l.data_param.backend == 1:
            src = l.data_param.source
        if src:
            try:
                data.check_lmdb(os.path.join(cwd, src))
            except ReconDecError as e:
                raise ReconDecError(f"{netpath}: layer '{l.name}': {e}")


def _check_weights_match(weights, net, netpath):
    """A weights file must share layer names with the net (Caffe copies by
    name and silently skips the rest); shape mismatches are caught from
    Caffe's own message."""
    m = prototxt.read_caffemodel(weights)
    names = {l.name for l in m.layer if l.blobs} | {l.name for l in m.layers if l.blobs}
    mine = {l.name for l in net.layer}
    if names and not names & mine:
        raise ReconDecError(f"{weights}: none of its layers ({', '.join(sorted(names)[:4])}...) "
                            f"is a layer of {netpath}")


# --------------------------------------------------------------------------
class _Progress:
    def __init__(self, total, initial, batch, desc, enabled):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it",
                        disable=not enabled, dynamic_ncols=True)
        self.batch = batch
        self.last = initial
        self.heads = {}
        self.ips = None

    def line(self, line):
        m = RE_ITER.search(line)
        if m:
            it = int(m.group(1))
            try:
                if self.batch:
                    self.ips = float(m.group(2)) * self.batch
            except ValueError:
                pass
            if it > self.last:
                self.bar.update(it - self.last)
                self.last = it
            return
        m = RE_TRAIN_OUT.search(line) or RE_TEST_OUT.search(line)
        if m:
            key = ("test:" if "Test net" in line else "") + m.group(1)
            self.heads[key] = m.group(2)
            post = {k: v for k, v in self.heads.items()}
            if self.ips is not None:
                post["img/s"] = f"{self.ips:.1f}"
            self.bar.set_postfix(post, refresh=False)

    def close(self):
        self.bar.close()


def run_stage(plan_path, stage, gpu=None, progress=True, caffe=None):
    """Trains one stage (its ``step`` number). Returns the output caffemodel
    path. Skips a complete stage; resumes from the newest snapshot."""
    plan = load_plan(plan_path)
    st = _stage(plan, stage)
    step = st["step"]
    output = stage_output(plan, step)
    if os.path.isfile(output):
        if progress:
            print(f"stage {step}: complete ({st['output']} exists)", file=sys.stderr)
        return output
    cwd = plan["_dir"]
    solver_path = _abs(plan, st["solver"])
    solver = read_solver(solver_path)
    net_rel = st.get("train_net") or solver.net or solver.train_net
    net_path = _abs(plan, net_rel) if net_rel else None
    net = read_net(net_path) if net_path else None
    if net is not None:
        _check_sources(net, net_path, cwd)
    if st.get("max_iter") and solver.max_iter and int(st["max_iter"]) != solver.max_iter:
        raise ReconDecError(f"{solver_path}: max_iter is {solver.max_iter} but the plan says "
                            f"{st['max_iter']} for stage {step}")
    max_iter = int(st.get("max_iter") or solver.max_iter)
    resume = newest_snapshot(plan, st)
    cmd = [caffe or caffe_binary(), "train", "-solver", solver_path]
    if resume:
        cmd += ["-snapshot", resume[1]]
        start = resume[0]
    else:
        weights = resolve_weights(plan, st)
        if net is not None:
            for w in weights:
                _check_weights_match(w, net, net_path)
        if weights:
            cmd += ["-weights", ",".join(weights)]
        start = 0
    if gpu is not None and str(gpu) != "":
        cmd += ["-gpu", str(gpu)]
    # Stop on SIGINT: Caffe then snapshots (snapshot_after_train); without
    # that we ask for a snapshot (SIGHUP) first and stop once it is written.
    two_step = not solver.snapshot_after_train
    cmd += ["-sigint_effect", "stop", "-sighup_effect", "snapshot"]
    os.makedirs(os.path.dirname(_abs(plan, st["snapshot_prefix"])) or cwd, exist_ok=True)
    log_path = os.path.join(cwd, "logs", f"step{step}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0",
               GLOG_alsologtostderr="0")
    batch = (_train_batch(net) or 0) * max(1, solver.iter_size) if net else None
    bar = _Progress(max_iter, start, batch, f"stage {step}", progress)
    state = {"stopping": False, "snap_wanted": False}

    def preexec():
        os.setpgrp()  # our own group: a terminal's Ctrl-C reaches only us
        try:  # if the driver dies, Caffe gets SIGINT: snapshot and stop
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)
        except Exception:
            pass

    with open(log_path, "a") as log:
        log.write(f"# recon-dec train: stage {step} {'resuming from ' + resume[1] if resume else 'from scratch'}\n"
                  f"# {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=preexec,
                                text=True, errors="replace", bufsize=1)

        def on_signal(signum, frame):
            if state["stopping"]:
                return
            state["stopping"] = True
            if two_step:
                state["snap_wanted"] = True
                proc.send_signal(signal.SIGHUP)
            else:
                proc.send_signal(signal.SIGINT)

        def on_hup(signum, frame):
            proc.send_signal(signal.SIGHUP)

        old = {s: signal.signal(s, h) for s, h in
               ((signal.SIGINT, on_signal), (signal.SIGTERM, on_signal), (signal.SIGHUP, on_hup))}
        fatal = diverged = None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                bar.line(line)
                m = RE_FATAL.match(line)
                if m and fatal is None:
                    fatal = m.group(1).strip()
                m = RE_ITER.search(line)
                if m and not math.isfinite(_float(m.group(3))) and diverged is None:
                    # NaN weights are worthless, and NaN input makes Caffe's
                    # MAX pooling leave mask -1, whose backward writes out of
                    # bounds: stop at once, without a snapshot.
                    diverged = (int(m.group(1)), m.group(3))
                    proc.kill()
                if state["snap_wanted"] and RE_SNAPSHOT.search(line):
                    state["snap_wanted"] = False
                    proc.send_signal(signal.SIGINT)
            rc = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if proc.returncode == 0 and not state["stopping"] and bar.last < max_iter:
                bar.bar.update(max_iter - bar.last)
            bar.close()
    if state["stopping"]:
        snap = newest_snapshot(plan, st)
        at = f"iteration {snap[0]}" if snap else "no snapshot"
        raise KeyboardInterrupt(f"stage {step} stopped at {at}; rerun to resume")
    if diverged:
        raise ReconDecError(f"{log_path}: the loss became {diverged[1]} at iteration {diverged[0]}: "
                            f"training diverged (learning rate too high for this net?); stopped, "
                            f"nothing written beyond the earlier snapshots")
    if rc != 0:
        raise ReconDecError(_explain(fatal, rc, log_path, cmd))
    if not os.path.isfile(output):
        raise ReconDecError(f"{plan['_path']}: stage {step} finished but its output "
                            f"{st['output']} was not written (does the solver's max_iter / "
                            f"snapshot_prefix match the plan?)")
    return output


def _float(text):
    try:
        return float(text)
    except ValueError:  # "-nan" and the like
        return math.nan


def _explain(fatal, rc, log_path, cmd):
    if not fatal:
        return f"{log_path}: caffe train exited with status {rc}"
    m = re.search(r"Cannot copy param (\d+) weights from layer '([^']+)'; (shape mismatch)\."
                  r"\s*Source param shape is ([^;]*?); target param shape is (.*?)\.", fatal)
    if m:
        w = cmd[cmd.index("-weights") + 1] if "-weights" in cmd else "weights"
        return (f"{w}: layer '{m.group(2)}': param {m.group(1)} shape mismatch "
                f"(weights {m.group(4).strip()}, net {m.group(5).strip()})")
    return f"{log_path}: caffe train failed: {fatal}"


def run_all(plan_path, gpu=None, progress=True, caffe=None):
    plan = load_plan(plan_path)
    outs = []
    for s in plan["stages"]:
        outs.append(run_stage(plan_path, s["step"], gpu=gpu, progress=progress, caffe=caffe))
    return outs


# --------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("train", help="run a plan's training stages with caffe")
    p.add_argument("plan", help="plan.json written by recon-dec generate")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--stage", type=int, help="the stage's step number")
    g.add_argument("--all", action="store_true", help="every stage in order, skipping complete ones")
    p.add_argument("--gpu", help="GPU ids for caffe -gpu (e.g. 0 or 0,1 or all); default CPU")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    try:
        if args.all:
            outs = run_all(args.plan, gpu=args.gpu, progress=not args.no_progress)
        else:
            outs = [run_stage(args.plan, args.stage, gpu=args.gpu, progress=not args.no_progress)]
    except KeyboardInterrupt as e:
        print(f"recon-dec: {e}" if str(e) else "recon-dec: interrupted", file=sys.stderr)
        return 130
    for o in outs:
        print(o)
