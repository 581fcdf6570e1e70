"""Training driver: runs ``caffe train`` for the stages of a plan.json
(docs/PLAN_FORMAT.md), resolving initial weights, resuming from the newest
snapshot, forwarding SIGINT/SIGTERM as "snapshot and stop", logging to
``<plan dir>/logs/<snapshot name>.log`` and showing a progress bar parsed from
Caffe's log."""
import glob
import math
import os
import re
import signal
import subprocess
import sys

from ..caffe_io import logs, protos
from ..caffe_io.tool import caffe_binary
from ..errors import ReconDecError
from . import plan as plans


def newest_snapshot(plan, stage):
    """(iteration, solverstate path) of the newest complete snapshot, or None."""
    prefix = plans.path(plan, stage["snapshot_prefix"])
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
        st = protos.pb2().SolverState()
        with open(path, "rb") as f:
            st.ParseFromString(f.read())
        return st.HasField("iter")
    except Exception:
        return False


# --------------------------------------------------------------------------
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
    from ..data import store as data
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
        m = logs.ITERATION.search(line)
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
        m = logs.TRAIN_OUTPUT.search(line) or logs.TEST_OUTPUT.search(line)
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
    """Trains one stage (its id). Returns the output caffemodel path. Skips
    a complete stage; resumes from the newest snapshot; otherwise
    initialises exactly the layers the plan's ``init`` lists."""
    plan = plans.load(plan_path)
    st = plans.stage(plan, stage)
    sid = st["id"]
    output = plans.stage_output(plan, sid)
    if os.path.isfile(output):
        if progress:
            print(f"stage {sid}: complete ({st['output']} exists)", file=sys.stderr)
        return output
    cwd = plan["_dir"]
    solver_path = plans.path(plan, st["solver"])
    solver = protos.read_solver(solver_path)
    net_rel = st.get("train_net") or solver.net or solver.train_net
    net_path = plans.path(plan, net_rel) if net_rel else None
    net = protos.read_net(net_path) if net_path else None
    if net is not None:
        _check_sources(net, net_path, cwd)
    if st.get("max_iter") and solver.max_iter and int(st["max_iter"]) != solver.max_iter:
        raise ReconDecError(f"{solver_path}: max_iter is {solver.max_iter} but the plan says "
                            f"{st['max_iter']} for stage {sid}")
    max_iter = int(st.get("max_iter") or solver.max_iter)
    resume = newest_snapshot(plan, st)
    cmd = [caffe or caffe_binary(), "train", "-solver", solver_path]
    weights, origin = None, {}
    if resume:
        cmd += ["-snapshot", resume[1]]
        start = resume[0]
    else:
        weights, origin = plans.init_weights(plan, st, net, net_path)
        if weights:
            cmd += ["-weights", weights]
        start = 0
    if gpu is not None and str(gpu) != "":
        cmd += ["-gpu", str(gpu)]
    # Stop on SIGINT: Caffe then snapshots (snapshot_after_train); without
    # that we ask for a snapshot (SIGHUP) first and stop once it is written.
    two_step = not solver.snapshot_after_train
    cmd += ["-sigint_effect", "stop", "-sighup_effect", "snapshot"]
    os.makedirs(os.path.dirname(plans.path(plan, st["snapshot_prefix"])) or cwd, exist_ok=True)
    log_path = plans.log_path(plan, st)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0",
               GLOG_alsologtostderr="0")
    batch = (_train_batch(net) or 0) * max(1, solver.iter_size) if net else None
    bar = _Progress(max_iter, start, batch, f"stage {sid}", progress)
    state = {"stopping": False, "snap_wanted": False}

    def preexec():
        os.setpgrp()  # our own group: a terminal's Ctrl-C reaches only us
        try:  # if the driver dies, Caffe gets SIGINT: snapshot and stop
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)
        except Exception:
            pass

    with open(log_path, "a") as log:
        log.write(f"# recon-dec train: stage {sid} {'resuming from ' + resume[1] if resume else 'from scratch'}\n"
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
                m = logs.FATAL.match(line)
                if m and fatal is None:
                    fatal = m.group(1).strip()
                m = logs.ITERATION.search(line)
                if m and not math.isfinite(_float(m.group(3))) and diverged is None:
                    # NaN weights are worthless, and NaN input makes Caffe's
                    # MAX pooling leave mask -1, whose backward writes out of
                    # bounds: stop at once, without a snapshot.
                    diverged = (int(m.group(1)), m.group(3))
                    proc.kill()
                if state["snap_wanted"] and logs.SNAPSHOT.search(line):
                    state["snap_wanted"] = False
                    proc.send_signal(signal.SIGINT)
            rc = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if proc.returncode == 0 and not state["stopping"] and bar.last < max_iter:
                bar.bar.update(max_iter - bar.last)
            bar.close()
            if weights and weights not in origin.values():
                os.unlink(weights)  # the stage's own init file: Caffe has read it
    if state["stopping"]:
        snap = newest_snapshot(plan, st)
        at = f"iteration {snap[0]}" if snap else "no snapshot"
        raise KeyboardInterrupt(f"stage {sid} stopped at {at}; rerun to resume")
    if diverged:
        raise ReconDecError(f"{log_path}: the loss became {diverged[1]} at iteration {diverged[0]}: "
                            f"training diverged (learning rate too high for this net?); stopped, "
                            f"nothing written beyond the earlier snapshots")
    if rc != 0:
        raise ReconDecError(_explain(fatal, rc, log_path, origin))
    if not os.path.isfile(output):
        raise ReconDecError(f"{plan['_path']}: stage {sid} finished but its output "
                            f"{st['output']} was not written (does the solver's max_iter / "
                            f"snapshot_prefix match the plan?)")
    return output


def _float(text):
    try:
        return float(text)
    except ValueError:  # "-nan" and the like
        return math.nan


def _explain(fatal, rc, log_path, origin):
    if not fatal:
        return f"{log_path}: caffe train exited with status {rc}"
    m = re.search(r"Cannot copy param (\d+) weights from layer '([^']+)'; (shape mismatch)\."
                  r"\s*Source param shape is ([^;]*?); target param shape is (.*?)\.", fatal)
    if m:
        w = origin.get(m.group(2), "weights")
        return (f"{w}: layer '{m.group(2)}': param {m.group(1)} shape mismatch "
                f"(weights {m.group(4).strip()}, net {m.group(5).strip()})")
    return f"{log_path}: caffe train failed: {fatal}"


def run_all(plan_path, gpu=None, progress=True, caffe=None):
    plan = plans.load(plan_path)
    outs = []
    for s in plan["stages"]:
        outs.append(run_stage(plan_path, s["id"], gpu=gpu, progress=progress, caffe=caffe))
    return outs


# --------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("train", help="run a plan's training stages with caffe")
    p.add_argument("plan", help="plan.json written by recon-dec generate")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--stage", help="the stage's id (plan.json: stages[].id, e.g. 2)")
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
