"""`recon-dec semi --method ladder` and `recon-dec demo ladder --quick` end
to end on the shipped MNIST digits: real LMDBs, `caffe train` of both
stages of each variant, the clean pass's test error from the log."""
import json
import os

import pytest

from recon_dec import cli
from recon_dec.experiments import ladder


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("GLOG_minloglevel", "2")


def test_preset_follows_the_label_count():
    assert [ladder.preset_for(n) for n in (50, 100, 300, 1000, 20000, "all")] == \
        ["50", "100", "100", "1000", "1000", "all"]


def test_semi_ladder_trains_tabulates_and_continues(tmp_path, capsys):
    out = tmp_path / "semi"
    args = ["semi", "--method", "ladder", "--dataset", "mnist5k", "--labels", "100", "--seeds", "0",
            "--variants", "full", "supervised", "--iters", "30", "--out", str(out)]
    assert cli.main(args) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["labels"], r["seed"], r["iters"]) for r in rows] == \
        [("full", 100, 0, 30), ("supervised", 100, 0, 30)]
    for r in rows:
        # 30 iterations on 100 labels: far better than chance (90%), far from done
        assert 5.0 < r["test_error"] < 60.0 and 5.0 < r["test_error_recomputed"] < 60.0, r
        plan = json.loads((out / r["plan"]).read_text())
        assert [s["max_iter"] for s in plan["stages"]] == [20, 10]
        assert (out / r["plan"]).with_name("final_statistics.caffemodel").stat().st_size > 1e6
    table = (out / "results.md").read_text()
    assert "| full | " in table and "| supervised | " in table
    assert "running statistics" in table and "statistics recomputed over the training set" in table
    # every denoising cost of the full ladder is in its curves, on one iteration axis over both stages
    c = ladder.curves(str(out / rows[0]["plan"]))
    assert {"dec:loss@data", "dec:loss@fc1", "dec:loss@fc6", "loss"} <= set(c)
    assert max(i for i, _ in c["loss"]) >= 20
    # a second call finds every run done and trains nothing
    mtime = (out / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "labels, full: test error" not in capsys.readouterr().out
    assert (out / "results.json").stat().st_mtime_ns == mtime
    # rows of an earlier version, without the recomputed error: filled in from the kept weights, not trained
    first = [r.pop("test_error_recomputed") for r in rows]
    (out / "results.json").write_text(json.dumps(rows))
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "full: test error with recomputed statistics" in printed and "(running:" in printed
    assert "labels, full: test error " not in printed.replace("test error with recomputed", "")
    again = json.loads((out / "results.json").read_text())
    assert [r["test_error_recomputed"] for r in again] == first   # the same weights: the same statistics
    # the variants one after another (--jobs 1) instead of at once (default: the usable cores): the same numbers
    one = tmp_path / "one"
    assert cli.main(args[:-1] + [str(one), "--jobs", "1"]) == 0
    seq = json.loads((one / "results.json").read_text())
    key = lambda rows: [(r["variant"], r["test_error"], r["test_error_recomputed"]) for r in rows]
    assert key(seq) == key(again)


@pytest.mark.parametrize("flags, message", [
    (["--iters", "31"], "multiple of 3"),
    (["--variants", "plain"], "not a variant of --method ladder"),
    (["--labels", "5000"], "5000"),
    (["--method", "inversion", "--jobs", "2"], "--jobs: --method inversion runs one training at a time"),
])
def test_semi_ladder_bad_input(tmp_path, capsys, flags, message):
    out = tmp_path / "semi"
    rc = cli.main(["semi", "--method", "ladder", "--dataset", "mnist5k", "--seeds", "0", "--iters", "30",
                   "--out", str(out), *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (out / "runs").exists()


def test_demo_ladder_quick(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "ladder", "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in rows] == list(ladder.VARIANTS)
    assert all(r["iters"] == ladder.QUICK_ITERS and 3.0 < r["test_error"] < 50.0 for r in rows), rows
    for f in ("curves.png", "errors.png"):
        assert os.path.getsize(out / f) > 10000
    assert "| gamma | " in (out / "table.md").read_text()
