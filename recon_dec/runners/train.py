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

from .. import values
from ..caffe_io import logs, protos
from ..caffe_io.tool import caffe_binary, check_gpus
from ..errors import ReconDecError
from . import plan as plans

PR_SET_PDEATHSIG = 1


def newest_snapshot(plan, stage, warn=False):
    """(iteration, solverstate path) of the newest intact snapshot, or None.
    Caffe writes the caffemodel, then the solverstate: a solverstate killed
    mid-write is skipped in favour of the one before, and so is a snapshot
    whose caffemodel was damaged since (with a one-line warning if ``warn``)."""
    prefix = plans.path(plan, stage["snapshot_prefix"])
    found = []
    for p in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.search(r"_iter_(\d+)\.solverstate$", p)
        model = p[: -len(".solverstate")] + ".caffemodel"
        if m and os.path.getsize(p) > 0 and os.path.isfile(model):
            found.append((int(m.group(1)), p))
    damaged = []
    for it, p in sorted(found, reverse=True):
        if not _solverstate_ok(p):
            continue
        why = caffemodel_damage(p[: -len(".solverstate")] + ".caffemodel")
        if why:
            damaged.append((p[: -len(".solverstate")] + ".caffemodel", why))
            continue
        if damaged and warn:
            _warn_damaged(damaged, f"resuming from iteration {it} instead")
        return it, p
    if damaged and warn:
        _warn_damaged(damaged, "no intact snapshot left: starting the stage afresh")
    return None


def _remove_snapshots_from(plan, stage, first_bad):
    """Delete the stage's snapshots of iteration ``first_bad`` and later."""
    prefix = plans.path(plan, stage["snapshot_prefix"])
    for p in glob.glob(glob.escape(prefix) + "_iter_*"):
        m = re.search(r"_iter_(\d+)\.(caffemodel|solverstate)$", p)
        if m and int(m.group(1)) >= first_bad:
            os.unlink(p)


def _warn_damaged(damaged, then):
    names = ", ".join(f"{os.path.basename(m)} ({why})" for m, why in damaged)
    print(f"recon-dec: warning: damaged snapshot {names}; {then}", file=sys.stderr)


def caffemodel_damage(path):
    """Why the caffemodel ``path`` is not intact (it does not parse, a blob
    holds fewer values than its shape, no layer has weights), or None."""
    m = protos.pb2().NetParameter()
    try:
        with open(path, "rb") as f:
            m.ParseFromString(f.read())
    except Exception:
        return "it does not parse"
    layers = protos.caffemodel_layers(m)
    if not layers:
        return "no layer has weights"
    for name, l in layers.items():
        for b in l.blobs:
            dims = list(b.shape.dim) if b.HasField("shape") else [b.num, b.channels, b.height, b.width]
            n = 1
            for d in dims:
                n *= d
            if n != max(len(b.data), len(b.double_data)):
                return f"layer '{name}' is cut short"
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


def net_input(plan):
    """(C, H, W) the plan's nets are built for: plan.json's ``input``, or the
    Input layer of the deploy.prototxt beside it; None when neither says."""
    shape = plan.get("input")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape):
        return tuple(shape)
    deploy = os.path.join(plan["_dir"], "deploy.prototxt")
    if os.path.isfile(deploy):
        try:
            for l in protos.read_net(deploy).layer:
                if l.type == "Input" and l.input_param.shape and len(l.input_param.shape[0].dim) == 4:
                    return tuple(l.input_param.shape[0].dim[1:])
        except ReconDecError:
            return None
    return None


def _check_sources(net, netpath, cwd, want=None):
    """Each LMDB a data layer reads: it opens, holds images, and (Caffe's
    Data layer, which decodes them as stored) they have the channels and
    size of the net's input ``want`` (C, H, W) -- before Caffe aborts on it,
    or trains another net than the one generated."""
    from ..data import store as data
    for l in net.layer:
        src = None
        if l.type == "ScaleJitterData" and l.scale_jitter_data_param.backend == 1:
            src = l.scale_jitter_data_param.source
        elif l.type == "Data" and l.data_param.backend == 1:
            src = l.data_param.source
        if not src:
            continue
        db = os.path.join(cwd, src)
        try:
            c, h, w = data.first_image(db)
        except ReconDecError as e:
            raise ReconDecError(f"{netpath}: layer '{l.name}': {e}") from None
        if l.type != "Data":
            continue  # ScaleJitterData converts colour and resizes itself
        crop = l.transform_param.crop_size
        at = f"{netpath}: layer '{l.name}': {src}"
        if want and c != want[0]:
            raise ReconDecError(f"{at}: images with {c} channel{'s' * (c != 1)}, the net takes {want[0]} "
                                f"(rebuild it with `recon-dec data build --channels {want[0]}`)")
        if crop and (h < crop or w < crop):
            raise ReconDecError(f"{at}: images of {h}x{w} are smaller than the {crop}x{crop} crop")
        if not crop and want and (h, w) != tuple(want[1:]):
            raise ReconDecError(f"{at}: images of {h}x{w}, the net takes {want[1]}x{want[2]} (no crop)")


# --------------------------------------------------------------------------
class _Progress:
    def __init__(self, total, initial, batch, desc, enabled):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it",
                        disable=not enabled or not values.stderr_tty(), dynamic_ncols=True)
        self.batch = batch
        self.last = initial
        self.heads = {}
        self.ips = None
        self.stopped_early = False

    def line(self, line):
        if "Optimization stopped early" in line:
            self.stopped_early = True
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
        why = caffemodel_damage(output)
        if why is None:
            if progress:
                print(f"stage {sid}: complete ({st['output']} exists)", file=sys.stderr)
            return output
        print(f"recon-dec: warning: {output}: the stage's output is damaged ({why}); "
              "training it again from the newest intact snapshot", file=sys.stderr)
        os.replace(output, output + ".damaged")
    cwd = plan["_dir"]
    solver_path, solver, net_path, net, max_iter = check_stage(plan, st)
    if net is not None:
        _check_sources(net, net_path, cwd, net_input(plan))
    resume = newest_snapshot(plan, st, warn=True)
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

    driver = os.getpid()

    def preexec():
        os.setpgrp()  # our own group: a terminal's Ctrl-C reaches only us
        try:  # if the driver dies, Caffe gets SIGINT: snapshot and stop
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGINT))
        except Exception:
            pass
        if os.getppid() != driver:  # the driver died before prctl: do not start
            os._exit(1)

    # Caffe writes its log to the file itself and the driver follows it: when
    # the driver dies, Caffe's output does not go to a closed pipe (SIGPIPE
    # would kill it before it snapshots).
    with open(log_path, "a") as log:
        log.write(f"# recon-dec train: stage {sid} {'resuming from ' + resume[1] if resume else 'from scratch'}\n"
                  f"# {' '.join(cmd)}\n")
        log.flush()
        follow = open(log_path, errors="replace")
        follow.seek(0, os.SEEK_END)
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=preexec)

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
            for line in _follow(follow, proc):
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
            follow.close()
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
        # A fast net may finish (and snapshot) before the driver reads the
        # NaN line: snapshots from that iteration on hold worthless weights.
        _remove_snapshots_from(plan, st, diverged[0])
        raise ReconDecError(f"{log_path}: the loss became {diverged[1]} at iteration {diverged[0]}: "
                            f"training diverged (learning rate too high for this net?); stopped, "
                            f"nothing written beyond the earlier snapshots")
    if rc != 0:
        raise ReconDecError(_explain(fatal, rc, log_path, origin, newest_snapshot(plan, st)))
    if not os.path.isfile(output) and bar.stopped_early:  # caffe got a SIGINT of its own
        snap = newest_snapshot(plan, st)
        raise KeyboardInterrupt(f"stage {sid}: caffe was stopped at {'iteration %d' % snap[0] if snap else 'the start'}"
                                f" (a signal from outside); rerun to resume")
    if not os.path.isfile(output):
        raise ReconDecError(f"{plan['_path']}: stage {sid} finished but its output "
                            f"{st['output']} was not written (does the solver's max_iter / "
                            f"snapshot_prefix match the plan?)")
    return output


def _follow(f, proc, poll=0.05):
    """Lines appended to the log file ``f`` while ``proc`` runs, then the rest."""
    import time
    part = ""
    while True:
        chunk = f.readline()
        if chunk:
            part += chunk
            if part.endswith("\n"):
                yield part
                part = ""
            continue
        if proc.poll() is not None:
            rest = part + f.read()
            yield from (l + "\n" for l in rest.splitlines())
            return
        time.sleep(poll)


def _float(text):
    try:
        return float(text)
    except ValueError:  # "-nan" and the like
        return math.nan


def _explain(fatal, rc, log_path, origin, resume_at=None):
    if not fatal:
        at = f"iteration {resume_at[0]}" if resume_at else "the start"
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            return (f"{log_path}: caffe was stopped by {sig} (from outside: killed, out of memory?); "
                    f"rerun to resume from {at}")
        return f"{log_path}: caffe train exited with status {rc} without saying why; rerun to resume from {at}"
    m = re.search(r"Cannot copy param (\d+) weights from layer '([^']+)'; (shape mismatch)\."
                  r"\s*Source param shape is ([^;]*?); target param shape is (.*?)\.", fatal)
    if m:
        w = origin.get(m.group(2), "weights")
        return (f"{w}: layer '{m.group(2)}': param {m.group(1)} shape mismatch "
                f"(weights {m.group(4).strip()}, net {m.group(5).strip()})")
    from ..caffe_io.netcheck import translate
    return f"{log_path}: caffe train failed: {translate(fatal)}"


def check_stage(plan, st):
    """What can be checked of a stage before anything runs: its solver and
    net parse, and the plan agrees with the solver on max_iter, the snapshot
    prefix and so the output. Returns (solver path, solver, net path, net,
    max_iter)."""
    sid = st["id"]
    solver_path = plans.path(plan, st["solver"])
    solver = protos.read_solver(solver_path)
    net_rel = st.get("train_net") or solver.net or solver.train_net
    net_path = plans.path(plan, net_rel) if net_rel else None
    net = protos.read_net(net_path) if net_path else None
    if st.get("max_iter") and solver.max_iter and int(st["max_iter"]) != solver.max_iter:
        raise ReconDecError(f"{solver_path}: max_iter is {solver.max_iter} but the plan says "
                            f"{st['max_iter']} for stage {sid}")
    max_iter = int(st.get("max_iter") or solver.max_iter)
    if max_iter < 1:
        raise ReconDecError(f"{solver_path}: max_iter must be >= 1 (stage {sid})")
    prefix = os.path.normpath(plans.path(plan, st["snapshot_prefix"]))
    if solver.snapshot_prefix and os.path.normpath(os.path.join(plan["_dir"], solver.snapshot_prefix)) != prefix:
        raise ReconDecError(f"{solver_path}: snapshot_prefix is '{solver.snapshot_prefix}' but the plan says "
                            f"'{st['snapshot_prefix']}' for stage {sid}")
    if os.path.normpath(plans.stage_output(plan, sid)) != os.path.normpath(f"{prefix}_iter_{max_iter}.caffemodel"):
        raise ReconDecError(f"{plan['_path']}: stage {sid}'s output '{st['output']}' is not what Caffe writes "
                            f"('{st['snapshot_prefix']}_iter_{max_iter}.caffemodel')")
    return solver_path, solver, net_path, net, max_iter


def run_all(plan_path, gpu=None, progress=True, caffe=None):
    plan = plans.load(plan_path)
    for s in plan["stages"]:  # a broken later stage stops us before the first trains
        check_stage(plan, s)
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
    if args.gpu is not None:
        args.gpu = check_gpus(args.gpu)
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
