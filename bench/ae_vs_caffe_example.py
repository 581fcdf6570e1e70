"""Caffe's own MNIST autoencoder example against `recon-dec generate --method
autoencoder` on the same data, the same 784-1000-500-250-30 sigmoid stack,
the same cross-entropy loss, fillers and solver (Caffe's
examples/mnist/mnist_autoencoder{,_solver}.prototxt from the source tree we
build), trained for the same iterations with the same seeds. Prints the test
reconstruction cross-entropy of both per seed, their means and the ratio
(ours / Caffe's); writes OUT/results.json.

    .venv/bin/python bench/ae_vs_caffe_example.py [--iters 3000] [--seeds 0 1 2] [--out out/ae-vs-caffe]

The example's own schedule is 65000 iterations; `--iters` shortens it for
both (the step at 10000 iterations is kept)."""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recon_dec.caffe_io import logs, protos  # noqa: E402
from recon_dec.caffe_io.tool import caffe_binary  # noqa: E402
from recon_dec.data import mnist, store  # noqa: E402
from recon_dec.runners import train  # noqa: E402

DEPLOY = REPO / "models" / "mnist_autoencoder" / "deploy.prototxt"


def example_dir():
    import caffe
    return pathlib.Path(caffe.__file__).resolve().parents[2] / "examples" / "mnist"


def build_data(out):
    """The 5,000 MNIST digits we ship: 4,000 train / 1,000 test (fixed split), 28x28."""
    images, labels = mnist.load_mnist_5k()
    train_idx, test_idx = mnist.split(labels)
    dbs = {}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        db = out / f"{name}_lmdb"
        if not (db / "data.mdb").exists():
            store.build_lmdb([(images[i], int(labels[i])) for i in idx], db, progress=False)
        dbs[name] = (str(db), len(idx))
    return dbs


def final_test(log, key):
    curves = logs.parse_log(log)["test"]
    if key not in curves:
        raise SystemExit(f"{log}: no test output {key!r} (have {sorted(curves)})")
    return curves[key][-1][1]


def run_caffe_example(d, dbs, iters, seed):
    """Caffe's example, sources and schedule replaced, as `caffe train`."""
    net = protos.read_net(str(example_dir() / "mnist_autoencoder.prototxt"))
    for l in net.layer:
        if l.type == "Data":
            stage = l.include[0].stage[0] if l.include and l.include[0].stage else ""
            l.data_param.source = dbs["test" if stage == "test-on-test" else "train"][0]
    solver = protos.read_solver(str(example_dir() / "mnist_autoencoder_solver.prototxt"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "net.prototxt").write_text(str(net))
    solver.net = str(d / "net.prototxt")
    del solver.test_iter[:]
    solver.test_iter.extend([dbs["train"][1] // 100, dbs["test"][1] // 100])
    solver.test_interval = iters
    solver.max_iter = iters
    solver.snapshot = 0
    solver.snapshot_after_train = False
    solver.snapshot_prefix = str(d / "snap")
    solver.solver_mode = solver.CPU
    solver.random_seed = seed
    (d / "solver.prototxt").write_text(str(solver))
    log = d / "caffe.log"
    env = dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")
    with open(log, "w") as f:
        subprocess.run([caffe_binary(), "train", "-solver", str(d / "solver.prototxt")], stdout=f,
                       stderr=subprocess.STDOUT, env=env, check=True)
    return final_test(log, "#1/cross_entropy_loss")


def run_ours(d, dbs, iters, seed):
    """The generator's equivalent: variant ae, untied, cross-entropy, the
    example's solver (the method's defaults), trained by `recon-dec train`."""
    from recon_dec import cli
    args = ["generate", "--method", "autoencoder", "--net", str(DEPLOY), "--variant", "ae", "--untied",
            "--loss", "ce", "--out", str(d), "--train-source", dbs["train"][0], "--val-source", dbs["test"][0],
            "--test-batch", "100", "--test-iter", str(dbs["test"][1] // 100), "--test-interval", str(iters),
            "--max-iter", f"pretrain={iters}", "--random-seed", str(seed), "--solver-mode", "CPU"]
    if cli.main(args) != 0:
        raise SystemExit("generate failed")
    plan = d / "ae" / "plan.json"
    train.run_stage(str(plan), "pretrain", progress=False)
    return final_test(d / "ae" / "logs" / "pretrain.log", "dec:loss@data")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="out/ae-vs-caffe")
    a = p.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    out = pathlib.Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dbs = build_data(out)
    rows = []
    for seed in a.seeds:
        t0 = time.time()
        theirs = run_caffe_example(out / f"caffe-seed{seed}", dbs, a.iters, seed)
        t1 = time.time()
        ours = run_ours(out / f"ours-seed{seed}", dbs, a.iters, seed)
        t2 = time.time()
        rows.append({"seed": seed, "caffe_example": theirs, "recon_dec": ours,
                     "caffe_seconds": round(t1 - t0, 1), "recon_dec_seconds": round(t2 - t1, 1)})
        print(f"seed {seed}: test cross-entropy Caffe's example {theirs:.3f} ({t1 - t0:.0f} s), "
              f"recon-dec {ours:.3f} ({t2 - t1:.0f} s)", flush=True)
    c = np.array([r["caffe_example"] for r in rows])
    o = np.array([r["recon_dec"] for r in rows])
    summary = {"iters": a.iters, "seeds": a.seeds, "train": dbs["train"][1], "test": dbs["test"][1],
               "caffe_example_mean": float(c.mean()), "caffe_example_std": float(c.std()),
               "recon_dec_mean": float(o.mean()), "recon_dec_std": float(o.std()),
               "ratio": float(o.mean() / c.mean()), "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"mean test cross-entropy over {len(rows)} seeds: Caffe's example {c.mean():.3f} ± {c.std():.3f}, "
          f"recon-dec {o.mean():.3f} ± {o.std():.3f}; ratio {o.mean() / c.mean():.3f}")
    return summary


if __name__ == "__main__":
    main()
