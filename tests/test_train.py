"""recon_dec.train: a 2-stage plan on real Caffe (CPU), kill/resume, and the
one-line errors for missing prerequisites, bad weights and bad LMDBs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import recon_dec_fixtures as fx  # noqa: E402
from recon_dec.data import store as data  # noqa: E402
from recon_dec.experiments import plot  # noqa: E402
from recon_dec.runners import plan as plans  # noqa: E402
from recon_dec.runners import train  # noqa: E402
from recon_dec.errors import ReconDecError  # noqa: E402

PY = sys.executable
DRIVER = ("import sys, argparse; from recon_dec.runners import train;"
          "p=argparse.ArgumentParser(); s=p.add_subparsers(dest='c', required=True);"
          "train.register(s); a=p.parse_args(sys.argv[1:]); sys.exit(a.func(a) or 0)")


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dbs")
    _, items = fx.make_image_folder(str(d / "img"), per_class=8)
    data.build_lmdb(items, d / "train", shorter_edge=40, progress=False)
    _, vitems = fx.make_image_folder(str(d / "vimg"), per_class=4, seed=1)
    data.build_lmdb(vitems, d / "val", shorter_edge=32, progress=False)
    return str(d / "train"), str(d / "val")


def _params(path, deploy):
    import caffe
    net = caffe.Net(deploy, path, caffe.TEST)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_two_stage_plan_runs_and_skips_completed(tmp_path, dbs):
    plan = fx.two_stage_plan(str(tmp_path), *dbs, iters2=20, iters4=20)
    outs = train.run_all(plan, progress=False)
    assert [os.path.relpath(o, tmp_path) for o in outs] == [
        "snapshots/step2_iter_20.caffemodel", "snapshots/step4_iter_20.caffemodel"]
    log4 = open(tmp_path / "logs/step4.log").read()
    assert "-weights " + str(tmp_path / "snapshots/step2_iter_20.caffemodel") in log4
    assert f'weights: "{tmp_path}/snapshots/step2_iter_20.caffemodel"' in log4  # solver got it
    # stage 2 froze conv1 (lr_mult 0): equal to stage 4's start, which was copied
    deploy = str(tmp_path / "deploy.prototxt")
    p2 = _params(outs[0], deploy)
    p4 = _params(outs[1], deploy)
    assert not np.allclose(p2["fc1"][0], p4["fc1"][0])
    curves = plot.parse_log(str(tmp_path / "logs/step4.log"))
    assert [it for it, _ in curves["train"]["loss"]] == [0, 5, 10, 15]
    assert [it for it, _ in curves["test"]["accuracy"]] == [10, 20]
    png = plot.plot_log(str(tmp_path / "logs/step4.log"), str(tmp_path / "step4.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # --all again: nothing to do, nothing touched
    m = os.path.getmtime(outs[1])
    assert train.run_all(plan, progress=False) == outs
    assert os.path.getmtime(outs[1]) == m


def _one_stage(d, train_db, max_iter, snapshot=0):
    """A deterministic stage: batch = the whole DB, no random crop/mirror."""
    kw = dict(square=40, test_size=40, crop=40, mirror=False)
    fx.write(os.path.join(d, "net.prototxt"), fx.train_net(train_db, None, batch=32, train_kw=kw))
    fx.write(os.path.join(d, "solver.prototxt"),
             fx.solver("net.prototxt", "snapshots/s", max_iter, snapshot=snapshot, test=False,
                       display=1, lr=0.01))
    fx.write(os.path.join(d, "deploy.prototxt"), fx.deploy_net(size=40))
    plan = {"format": "recon-dec-plan/1", "variant": "t", "pretrained": None, "stages": [
        {"step": 4, "solver": "solver.prototxt", "train_net": "net.prototxt", "init": [],
         "requires": [], "snapshot_prefix": "snapshots/s", "max_iter": max_iter,
         "output": f"snapshots/s_iter_{max_iter}.caffemodel"}]}
    return fx.write(os.path.join(d, "plan.json"), json.dumps(plan))


def test_sigterm_snapshots_and_restart_resumes(tmp_path, dbs):
    d = str(tmp_path / "run")
    plan = _one_stage(d, dbs[0], 1000000)
    proc = subprocess.Popen([PY, "-c", DRIVER, "train", plan, "--stage", "4", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(d, "logs/step4.log")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and re.search(r"Iteration (1\d|[2-9]\d|\d{3,}) \(", open(log).read()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    snap = train.newest_snapshot(plans.load(plan), plans.load(plan)["stages"][0])
    assert snap is not None
    k = snap[0]
    assert k >= 10 and f"stopped at iteration {k}; rerun to resume" in err
    assert "Optimization stopped early" in open(log).read()
    model_k = os.path.join(d, f"snapshots/s_iter_{k}.caffemodel")
    before = open(model_k, "rb").read()
    # restart, to k + 8 iterations
    plan = _one_stage(d, dbs[0], k + 8)
    out = train.run_stage(plan, 4, progress=False)
    assert out.endswith(f"s_iter_{k + 8}.caffemodel")
    resumed = open(log).read().split("# recon-dec train: stage 4 resuming from")[1]
    iters = [int(i) for i in re.findall(r"Iteration (\d+) \(", resumed)]
    assert iters[0] == k and iters[-1] == k + 7
    assert open(model_k, "rb").read() == before  # nothing lost
    # a truncated newer solverstate (killed mid-write) is passed over
    st = os.path.join(d, f"snapshots/s_iter_{k + 8}.solverstate")
    open(os.path.join(d, f"snapshots/s_iter_{k + 9}.caffemodel"), "wb").write(b"x")
    open(os.path.join(d, f"snapshots/s_iter_{k + 9}.solverstate"), "wb").write(open(st, "rb").read()[:7])
    assert train.newest_snapshot(plans.load(plan), plans.load(plan)["stages"][0])[0] == k + 8
    # same result as an uninterrupted run of k + 8 iterations
    d2 = str(tmp_path / "straight")
    plan2 = _one_stage(d2, dbs[0], k + 8)
    out2 = train.run_stage(plan2, 4, progress=False)
    deploy = os.path.join(d, "deploy.prototxt")
    a, b = _params(out, deploy), _params(out2, deploy)
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert np.allclose(x, y, rtol=1e-4, atol=1e-6), name
    # and the resumed run started from the snapshot's weights: its first loss
    # equals the uninterrupted run's loss at iteration k
    def loss_at(path, it):
        txt = open(path).read().split("resuming from")[-1]
        return float(re.search(rf"Iteration {it} \(.*loss = (\S+)", txt).group(1))
    assert abs(loss_at(log, k) - loss_at(os.path.join(d2, "logs/step4.log"), k)) < 1e-4


def test_missing_prerequisite_is_one_line_and_touches_nothing(tmp_path, dbs):
    plan = fx.two_stage_plan(str(tmp_path), *dbs, iters2=20, iters4=20)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ReconDecError) as e:
        train.run_stage(plan, 4, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "stage 4 needs stage 2's output snapshots/step2_iter_20.caffemodel" in msg
    assert sorted(os.listdir(tmp_path)) == before
    r = subprocess.run([PY, "-c", DRIVER.replace("sys.exit(a.func(a) or 0)",
                        "\ntry: a.func(a)\nexcept train.ReconDecError as e: print('recon-dec: error:', e, file=sys.stderr); sys.exit(2)"),
                        "train", plan, "--stage", "4"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_mismatched_weights_and_bad_lmdb(tmp_path, dbs):
    plan = fx.two_stage_plan(str(tmp_path), *dbs, iters2=10, iters4=10)
    # a caffemodel of a net with 7 classes: fc2 does not fit
    import caffe
    other = fx.write(str(tmp_path / "other.prototxt"), fx.deploy_net(n_classes=7))
    caffe.Net(other, caffe.TEST).save(str(tmp_path / "other.caffemodel"))
    p = json.load(open(plan))
    p["stages"][0]["init"] = [{"weights": "other.caffemodel", "layers": ["fc2"]}]
    json.dump(p, open(plan, "w"))
    with pytest.raises(ReconDecError) as e:
        train.run_stage(plan, 2, progress=False)
    assert str(e.value).startswith(str(tmp_path / "other.caffemodel") + ": layer 'fc2': param 0 shape mismatch")
    assert not os.listdir(tmp_path / "snapshots")
    # weights of an unrelated net: no layer in common
    unrelated = fx.write(str(tmp_path / "u.prototxt"), fx.deploy_net().replace('"fc1"', '"zz1"')
                         .replace('"fc2"', '"zz2"').replace('"conv1"', '"zz0"'))
    caffe.Net(unrelated, caffe.TEST).save(str(tmp_path / "u.caffemodel"))
    p["stages"][0]["init"] = [{"weights": "u.caffemodel"}]  # no list: every layer of the file
    json.dump(p, open(plan, "w"))
    with pytest.raises(ReconDecError, match="none of its layers"):
        train.run_stage(plan, 2, progress=False)
    p["stages"][0]["init"] = [{"weights": "u.caffemodel", "layers": ["zz1"]}]
    json.dump(p, open(plan, "w"))
    with pytest.raises(ReconDecError, match="initialises layer 'zz1' from .*u.caffemodel, but .* has no such layer"):
        train.run_stage(plan, 2, progress=False)
    # corrupt training LMDB: named with the layer, before Caffe would abort
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"junk" * 100)
    net = open(tmp_path / "step2/train_val.prototxt").read().replace(dbs[0], str(bad))
    open(tmp_path / "step2/train_val.prototxt", "w").write(net)
    with pytest.raises(ReconDecError) as e:
        train.run_stage(plan, 2, progress=False)
    assert str(e.value).startswith(f"{tmp_path}/step2/train_val.prototxt: layer 'data': {bad}: corrupt")


def test_divergence_stops_with_one_line_and_no_output(tmp_path, dbs):
    """A learning rate far too high: the loss turns NaN/inf, the driver kills
    caffe at once (no snapshot of NaN weights) and says where."""
    plan = fx.two_stage_plan(str(tmp_path), *dbs, iters2=40, iters4=20)
    solver = tmp_path / "step2" / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.05", "base_lr: 1e6")
                      .replace("display: 5", "display: 1"))
    with pytest.raises(ReconDecError) as e:
        train.run_stage(plan, 2, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "training diverged" in msg
    m = re.search(r"the loss became (\S+) at iteration (\d+)", msg)
    assert m and not np.isfinite(float(m.group(1))) and int(m.group(2)) < 40
    assert not os.path.exists(tmp_path / "snapshots" / "step2_iter_40.caffemodel")


def test_divergence_found_after_caffe_finished(tmp_path, dbs):
    """The race CI hit: a tiny net finishes, snapshot included, before the
    driver reads the NaN line. A wrapper holds Caffe's output back until
    Caffe exits, so the driver always learns of the NaN too late; the
    snapshots from the NaN iteration on must still be gone."""
    plan = fx.two_stage_plan(str(tmp_path), *dbs, iters2=40, iters4=20)
    solver = tmp_path / "step2" / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.05", "base_lr: 1e6")
                      .replace("display: 5", "display: 1"))
    wrapper = tmp_path / "late_caffe.sh"
    wrapper.write_text(f'#!/bin/sh\n"{train.caffe_binary()}" "$@" > "{tmp_path}/held.log" 2>&1\n'
                       f'rc=$?\ncat "{tmp_path}/held.log"\nexit $rc\n')
    wrapper.chmod(0o755)
    with pytest.raises(ReconDecError, match="training diverged") as e:
        train.run_stage(plan, 2, progress=False, caffe=str(wrapper))
    first_bad = int(re.search(r"at iteration (\d+)", str(e.value)).group(1))
    assert "Snapshotting to binary proto file" in open(tmp_path / "held.log").read()
    left = [int(re.search(r"_iter_(\d+)", f).group(1)) for f in os.listdir(tmp_path / "snapshots")]
    assert all(it < first_bad for it in left), (first_bad, sorted(left))

