"""recon_dec.runners.jobs: independent jobs in worker processes (real
Caffe): concurrency with results in the jobs' order, the first error
stopping the others, Ctrl-C stopping every caffe with a snapshot, and the
same weights for 1 and 2 jobs at once."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import recon_dec_fixtures as fx  # noqa: E402
from recon_dec.data import store as data  # noqa: E402
from recon_dec.errors import ReconDecError  # noqa: E402
from recon_dec.runners import jobs, train  # noqa: E402
from recon_dec.runners import plan as plans  # noqa: E402


@pytest.fixture(scope="module")
def train_db(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs-db")
    _, items = fx.make_image_folder(str(d / "img"), per_class=8)
    data.build_lmdb(items, d / "train", shorter_edge=40, progress=False)
    return str(d / "train")


def _stage_plan(d, train_db, max_iter, seed=1701, lr=0.01):
    """A one-stage plan that trains deterministically (the whole DB as one
    batch, no random crop or mirror; ``seed`` fills the initial weights)."""
    kw = dict(square=40, test_size=40, crop=40, mirror=False)
    fx.write(os.path.join(d, "net.prototxt"), fx.train_net(train_db, None, batch=32, train_kw=kw))
    fx.write(os.path.join(d, "solver.prototxt"),
             fx.solver("net.prototxt", "snapshots/s", max_iter, test=False, display=1, lr=lr, seed=seed))
    plan = {"format": "recon-dec-plan/1", "variant": "t", "pretrained": None, "stages": [
        {"step": 4, "solver": "solver.prototxt", "train_net": "net.prototxt", "init": [],
         "requires": [], "snapshot_prefix": "snapshots/s", "max_iter": max_iter,
         "output": f"snapshots/s_iter_{max_iter}.caffemodel"}]}
    return fx.write(os.path.join(d, "plan.json"), json.dumps(plan))


def _meet(marks, me, others, timeout=20):
    """Marks ``me`` as started and waits for every one of ``others``:
    returns only if they all run at the same time as this job."""
    open(os.path.join(marks, me), "w").close()
    deadline = time.time() + timeout
    while not all(os.path.exists(os.path.join(marks, o)) for o in others):
        if time.time() > deadline:
            raise ReconDecError(f"{me}: the other jobs did not start alongside")
        time.sleep(0.01)
    return me, os.getpid(), os.environ.get("OPENBLAS_NUM_THREADS")


def _sleep_then(value, seconds):
    time.sleep(seconds)
    return value


def test_jobs_run_at_once_and_results_keep_the_jobs_order(tmp_path):
    names = ["a", "b"]
    got = jobs.run([jobs.Job(n, _meet, (str(tmp_path), n, names)) for n in names], 2)
    assert [g[0] for g in got] == names
    assert len({g[1] for g in got} | {os.getpid()}) == 3  # two worker processes
    assert all(g[2] == "1" for g in got)  # one BLAS thread each
    # the first job finishes last: still first in the results
    got = jobs.run([jobs.Job(f"s{i}", _sleep_then, (i, s)) for i, s in enumerate([0.6, 0.0, 0.2, 0.0])], 2)
    assert got == [0, 1, 2, 3]
    # one job at a time: in this process, in order
    assert jobs.run([jobs.Job(f"s{i}", _sleep_then, (i, 0)) for i in range(3)], 1) == [0, 1, 2]


def _fail_once_running(log, marks):
    """Fails (one line, naming a file) once the other job's caffe iterates."""
    deadline = time.time() + 60
    while not (os.path.exists(log) and re.search(r"Iteration [1-9]\d* \(", open(log).read())):
        if time.time() > deadline:
            break
        time.sleep(0.02)
    raise ReconDecError(f"{marks}/broken.prototxt: layer 'x': something is wrong")


def test_a_failing_job_stops_the_others_with_a_snapshot(tmp_path, train_db):
    long = _stage_plan(str(tmp_path / "long"), train_db, 1000000)
    log = str(tmp_path / "long" / "logs" / "step4.log")
    todo = [jobs.Job("long", train.run_stage, (long, 4), {"progress": False}),
            jobs.Job("bad", _fail_once_running, (log, str(tmp_path))),
            jobs.Job("never", _meet, (str(tmp_path), "never-started", []))]
    t = time.time()
    with pytest.raises(ReconDecError) as e:
        jobs.run(todo, 2)
    assert str(e.value) == f"{tmp_path}/broken.prototxt: layer 'x': something is wrong"
    assert time.time() - t < 60
    assert not (tmp_path / "never-started").exists()  # queued jobs do not start
    p = plans.load(long)
    snap = train.newest_snapshot(p, p["stages"][0])  # caffe stopped with a snapshot: resumable
    assert snap is not None and snap[0] >= 1
    assert "Optimization stopped early" in open(log).read()
    assert not _caffe_running(long)


def _caffe_running(plan):
    solver = os.path.join(os.path.dirname(plan), "solver.prototxt")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any("caffe train" in line and solver in line for line in ps.splitlines())


DRIVER = """
import sys
from recon_dec.runners import jobs, train
try:
    jobs.run([jobs.Job(f"plan{i}", train.run_stage, (p, 4), {"progress": False})
              for i, p in enumerate(sys.argv[1:])], 2)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_every_job_with_a_snapshot(tmp_path, train_db):
    ps = [_stage_plan(str(tmp_path / f"p{i}"), train_db, 1000000) for i in range(2)]
    logs = [str(tmp_path / f"p{i}" / "logs" / "step4.log") for i in range(2)]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *ps], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if all(os.path.exists(l) and re.search(r"Iteration [1-9]\d* \(", open(l).read()) for l in logs):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    for i, p in enumerate(ps):
        plan = plans.load(p)
        snap = train.newest_snapshot(plan, plan["stages"][0])
        assert snap is not None
        assert f"[plan{i}] stage 4 stopped at iteration {snap[0]}; rerun to resume" in err
        assert not _caffe_running(p)


def test_one_or_two_jobs_at_once_give_the_same_weights(tmp_path, train_db, monkeypatch):
    # one BLAS thread for the in-process run too: Caffe's weight gradients
    # depend on the thread count (the workers of N > 1 always have one)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    outs = {}
    for n in (1, 2):
        todo = [jobs.Job(f"net{s}", train.run_all, (_stage_plan(str(tmp_path / f"n{n}" / f"net{s}"),
                                                                train_db, 12, seed=s, lr=0.05),),
                         {"progress": False}) for s in (1, 2)]
        outs[n] = [o[-1] for o in jobs.run(todo, n)]
    blobs = [[open(f, "rb").read() for f in outs[n]] for n in (1, 2)]
    assert blobs[0] == blobs[1]
    assert blobs[0][0] != blobs[0][1]  # two different nets


def test_pool_waits_for_some_jobs_while_others_run(tmp_path):
    with jobs.Pool(2) as p:
        slow = p.submit(jobs.Job("slow", _meet, (str(tmp_path), "slow", ["quick", "quick-done"])))
        quick = p.submit(jobs.Job("quick", _meet, (str(tmp_path), "quick", ["slow"])))
        assert p.wait([quick])[0][0] == "quick"  # while "slow" still waits for the next mark
        open(tmp_path / "quick-done", "w").close()
        later = p.submit(jobs.Job("later", _sleep_then, ("later", 0)))
        got = p.wait([later, slow])
        assert got[0] == "later" and got[1][0] == "slow"


def test_demo_jobs_option():
    from recon_dec import cli
    assert cli.build_parser().parse_args(["demo", "--jobs", "2"]).jobs == 2
    assert cli.build_parser().parse_args(["demo"]).jobs is None  # run_demo: the usable cores
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["demo", "--jobs", "0"])
    assert e.value.code == 2
    assert jobs.usable_cores() == len(os.sched_getaffinity(0))


def test_single_blas_thread_reaches_caffe_already_loaded():
    # Caffe's CPU pool (patch 0006) takes its thread count from OpenBLAS once,
    # at first use; a process that used pycaffe at 2 threads and then asks for
    # one thread must get one in Caffe too, not only in OpenBLAS.
    code = (
        "import ctypes, os\n"
        "import caffe\n"
        "from recon_dec.runners import jobs\n"
        "lib = ctypes.CDLL('libcaffe.so.1.0.0', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)\n"
        "blas = ctypes.CDLL('libopenblas.so.0', mode=os.RTLD_NOLOAD | os.RTLD_LAZY)\n"
        "before = lib.caffe_cpu_threads(), blas.openblas_get_num_threads()\n"
        "jobs.single_blas_thread()\n"
        "print(before, (lib.caffe_cpu_threads(), blas.openblas_get_num_threads()),\n"
        "      os.environ['OPENBLAS_NUM_THREADS'])\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # before: Caffe read 2 and set OpenBLAS itself to one thread
    assert out.stdout.split() == ["(2,", "1)", "(1,", "1)", "1"], out.stdout
