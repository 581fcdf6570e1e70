"""Ladder-network experiments: ``recon-dec semi --method ladder`` (label
counts x seeds x variants, against the supervised control with the same
encoder, labels and schedule) and ``recon-dec demo ladder`` (MNIST-5k, 100
labels, a few minutes here).

Each run is the method's two stages (``train``: Adam at 0.002, then
``decay``: the rate linearly to 0), shortened to ``iters`` iterations of
100 labeled + 100 unlabeled images, two thirds before the decay as in the
paper's schedule. The test error is the clean pass's over the whole test
set at the end of ``decay``, twice: with the running statistics (the moving
average of training, as Caffe's TEST phase) and, as the official code's
final evaluation, with the statistics recomputed over the training images
the variant trained on (``runners.evaluate.recompute_statistics``)."""
import json
import os
import time

import numpy as np

from .. import atomic
from ..caffe_io import logs, protos
from ..data import datasets
from ..errors import ReconDecError
from ..methods import ladder
from ..runners import evaluate, generate, jobs as pool, plan as plans, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MLP = os.path.join(ROOT, "models", "ladder", "mlp.prototxt")
VARIANTS = ("full", "gamma", "supervised")
TEST_BATCH = 100
# Rasmus et al. (2015), MNIST 60,000, test error (%), as ../shared/reference/PAPER_FACTS.md
# records them: for reference only
PAPER_MNIST = {50: {"full": "1.62 ± 0.65"}, 100: {"full": "1.06 ± 0.37"},
               "all": {"full": "0.57", "supervised": "0.80"}}


def log(msg):
    print(f"[ladder {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def preset_for(labels):
    """The official code's lambda preset for a label count: the published
    one when there is one, else the nearest count's (log scale)."""
    if labels == "all":
        return "all"
    counts = [int(k) for k in ladder.PRESETS if k.isdigit()]
    return str(min(counts, key=lambda c: abs(np.log(c) - np.log(labels))))


def schedule(iters):
    """(train, decay) iterations: the decay over the last third (a
    multiple of 3, so that one test interval ends both stages)."""
    if iters < 3 or iters % 3:
        raise ReconDecError(f"--iters {iters}: the ladder's schedule needs a positive multiple of 3 "
                            f"(two thirds at the full rate, then the decay)")
    return 2 * iters // 3, iters // 3


def generate_runs(out, split, labels, variants, iters, seed, net, solver_mode="CPU"):
    """Writes the variants' nets for one split; -> {variant: plan path}."""
    test = split.info["counts"]["test"]
    if test % TEST_BATCH:
        raise ReconDecError(f"{split.test}: {test} test images are not a multiple of the test batch {TEST_BATCH}")
    n_train, n_decay = schedule(iters)
    args = ["--method", "ladder", "--net", net, "--out", out,
            "--train-source", split.unlabeled, "--labeled-source", split.labeled, "--val-source", split.test,
            "--lambdas-preset", preset_for(labels), "--test-batch", str(TEST_BATCH),
            "--test-iter", str(test // TEST_BATCH),
            "--max-iter", f"train={n_train}", "--max-iter", f"decay={n_decay}",
            "--test-interval", str(n_decay),
            "--snapshot", str(max(n_train, n_decay)), "--random-seed", str(seed), "--solver-mode", solver_mode]
    for v in variants:
        args += ["--variant", v]
    generate.main(args)
    return {v: os.path.join(out, v, "plan.json") for v in variants}


def test_error(plan_path):
    plan = plans.load(plan_path)
    st = plan["stages"][-1]
    acc = logs.parse_log(plans.log_path(plan, st))["test"].get("accuracy/top-1")
    if not acc:
        raise ReconDecError(f"{plans.log_path(plan, st)}: no test accuracy")
    return 100.0 * (1.0 - acc[-1][1])


def _training_input(plan):
    """(transform_param scale, batch size) of the plan's training Data
    layers (the same for both streams)."""
    net = protos.read_net(os.path.join(plan["_dir"], "train_val.prototxt"))
    data = next(l for l in net.layer if l.type == "Data")
    return data.transform_param.scale, data.data_param.batch_size


def recomputed_test_error(plan_path, split, variant):
    """Test error (%) of the plan's final weights with the normalisation
    statistics recomputed over the training images the variant learned
    from: every training image for the ladders (their unlabeled stream,
    labels unused), the labeled images for the supervised control, which
    never sees the others. The weights with those statistics are kept as
    ``final_statistics.caffemodel`` beside the plan."""
    plan = plans.load(plan_path)
    deploy = os.path.join(plan["_dir"], "deploy.prototxt")
    weights = plans.stage_output(plan, plan["stages"][-1]["id"])
    out = os.path.join(plan["_dir"], "final_statistics.caffemodel")
    source = split.labeled if variant == "supervised" else split.unlabeled
    scale, batch = _training_input(plan)
    evaluate.recompute_statistics(deploy, weights, source, out, batch, scale=scale)
    side = evaluate.input_shape(deploy)[1]
    r = evaluate.evaluate(deploy, out, split.test, shorter_edge=side, crop=side, scale=scale,
                          batch_size=TEST_BATCH, progress=False)
    return r["top1_error"]


def curves(plan_path):
    """Every training output of both stages against one iteration axis:
    {head: [(iteration, value)]}."""
    plan = plans.load(plan_path)
    out, offset = {}, 0
    for st in plan["stages"]:
        for head, points in logs.parse_log(plans.log_path(plan, st))["train"].items():
            out.setdefault(head, []).extend((offset + i, v) for i, v in points)
        offset += st["max_iter"]
    return out


def _train_and_test(plan_path, split, variant):
    """One run: -> (test error with the running statistics, with the
    recomputed ones, seconds)."""
    t0 = time.time()
    train.run_all(plan_path, progress=False)
    return test_error(plan_path), recomputed_test_error(plan_path, split, variant), time.time() - t0


def run(dataset, labels, seeds, variants, iters, out, net=MLP, results=None, jobs=None):
    """Trains every (seed, label count, variant), the variants of one
    (seed, label count) up to ``jobs`` at once (default: the usable
    cores), each Caffe at one BLAS thread whatever ``jobs`` (so the numbers
    do not depend on it); appends the finished runs to ``results`` (a JSON
    file, rewritten atomically) so that a long grid can be read, and
    continued, while it runs: a run already in it is not trained again."""
    jobs = pool.usable_cores() if jobs is None else jobs
    pool.single_blas_thread()
    out = os.path.abspath(out)
    results = results or os.path.join(out, "results.json")
    rows = json.load(open(results)) if os.path.exists(results) else []
    done = {(r["seed"], str(r["labels"]), r["variant"]) for r in rows}
    for seed in seeds:
        for n in labels:
            todo = [v for v in variants if (seed, str(n), v) not in done]
            # rows of an earlier version, without the recomputed statistics: their final weights are kept
            stale = [r for r in rows if (r["seed"], str(r["labels"])) == (seed, str(n))
                     and "test_error_recomputed" not in r]
            if not todo and not stale:
                continue
            split = datasets.write_semi_supervised(dataset, n, seed, os.path.join(out, "data", f"seed{seed}-{n}"))
            for r in stale:
                r["test_error_recomputed"] = round(
                    recomputed_test_error(os.path.join(out, r["plan"]), split, r["variant"]), 2)
                atomic.write_text(results, json.dumps(rows, indent=1) + "\n")
                log(f"{dataset} seed {seed}, {n} labels, {r['variant']}: test error with recomputed "
                    f"statistics {r['test_error_recomputed']:.2f}% (running: {r['test_error']:.2f}%)")
            if not todo:
                continue
            d = os.path.join(out, "runs", f"seed{seed}", f"labels{n}")
            if os.path.exists(d):  # an interrupted earlier call: its nets stand, train resumes its snapshots
                plan_paths = {v: os.path.join(d, v, "plan.json") for v in todo}
                missing = [p for p in plan_paths.values() if not os.path.exists(p)]
                if missing:
                    raise ReconDecError(f"{missing[0]}: missing in a run folder of an earlier call; "
                                        f"remove {d} to start that run again")
                for p in plan_paths.values():
                    if sum(st["max_iter"] for st in plans.load(p)["stages"]) != iters:
                        raise ReconDecError(f"{p}: written for another --iters than {iters}; "
                                            f"remove {d} or give its --iters")
            else:
                plan_paths = generate_runs(d, split, n, todo, iters, seed, net)
            done_runs = pool.run([pool.Job(v, _train_and_test, (plan_paths[v], split, v)) for v in todo], jobs)
            for v, (err, err_recomputed, secs) in zip(todo, done_runs):
                rows.append({"dataset": dataset, "seed": seed, "labels": n, "variant": v, "iters": iters,
                             "test_error": round(err, 2), "test_error_recomputed": round(err_recomputed, 2),
                             "seconds": round(secs, 1), "plan": os.path.relpath(plan_paths[v], out)})
                log(f"{dataset} seed {seed}, {n} labels, {v}: test error {err:.2f}% with the running statistics, "
                    f"{err_recomputed:.2f}% recomputed ({secs:.0f} s)")
            atomic.write_text(results, json.dumps(rows, indent=1) + "\n")
    return rows


ERRORS = {"test_error": "running statistics", "test_error_recomputed": "statistics recomputed over the training set"}


def table(rows, key="test_error"):
    """Markdown table of ``key`` (one of ``ERRORS``), mean ± std over seeds."""
    counts = list(dict.fromkeys(str(r["labels"]) for r in rows))
    lines = ["| variant | " + " | ".join(f"{n} labels" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for n in counts:
            e = np.array([r[key] for r in rows if r["variant"] == v and str(r["labels"]) == n and key in r])
            if len(e):
                cells.append(f"{e.mean():.2f} ± {e.std():.2f} (n={len(e)})")
            else:
                cells.append("")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(rows):
    """Both tables: the test error with the running statistics, and with
    the statistics recomputed over the training set (as the official code
    evaluates)."""
    return "\n\n".join(f"Test error (%), {what}:\n\n" + table(rows, key) for key, what in ERRORS.items())


def plot_curves(plan_paths, path, title=""):
    """Each variant's denoising costs (one line per layer) and supervised
    cost against the iteration, one panel per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(plan_paths), figsize=(5.5 * len(plan_paths), 4.2), squeeze=False)
    for ax, (variant, p) in zip(axes[0], plan_paths.items()):
        for head, points in sorted(curves(p).items()):
            if head.startswith("accuracy"):
                continue
            ax.plot([i for i, _ in points], [v for _, v in points], label=head, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(f"{title}{variant}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_errors(rows, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(variants))
    for k, ((key, what), color) in enumerate(zip(ERRORS.items(), ("#4c72b0", "#dd8452"))):
        errs = [[r[key] for r in rows if r["variant"] == v and key in r] for v in variants]
        if not all(errs):
            continue
        at = x + (k - 0.5) * 0.38
        ax.bar(at, [np.mean(e) for e in errs], 0.38, yerr=[np.std(e) for e in errs], color=color, capsize=3,
               label=what)
        for i, e in zip(at, errs):
            ax.text(i, np.mean(e), f"{np.mean(e):.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, variants)
    ax.legend(fontsize=7)
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------
# recon-dec demo ladder
DEMO_ITERS, QUICK_ITERS = 1500, 90


def run_demo(out, seeds=1, quick=False, jobs=None):
    t0 = time.time()
    iters = QUICK_ITERS if quick else DEMO_ITERS
    out = os.path.abspath(out)
    log(f"{'quick' if quick else 'default'} run: MNIST-5k, 100 labels, {iters} iterations of 100 + 100 images, "
        f"seeds 0..{seeds - 1}, output in {out}")
    rows = run("mnist5k", [100], list(range(seeds)), VARIANTS, iters, out, jobs=jobs)
    first = {v: os.path.join(out, "runs", "seed0", "labels100", v, "plan.json") for v in VARIANTS}
    plot_curves(first, os.path.join(out, "curves.png"), "MNIST-5k, 100 labels, seed 0: ")
    plot_errors(rows, os.path.join(out, "errors.png"), f"MNIST-5k, 100 labels, {iters} iterations")
    md = (f"Ladder networks on MNIST-5k (4,000 train / 1,000 test), 100 labels, the MLP 784-1000-500-250-250-250-10, "
          f"{iters} iterations of 100 labeled + 100 unlabeled images (decay over the last third), seeds "
          f"0..{seeds - 1}{' (quick: a smoke test, not a result)' if quick else ''}; test error (%), mean ± std; "
          f"{time.time() - t0:.0f} s in all.\n\n" + tables(rows)
          + "\n\nFor reference only (MNIST 60,000, 150 epochs): Rasmus et al. " + PAPER_MNIST[100]["full"]
          + " (full ladder) at 100 labels.\n\nCurves: curves.png (every denoising cost), "
            "errors.png.\n")
    atomic.write_text(os.path.join(out, "table.md"), md)
    print(md)
    return rows
