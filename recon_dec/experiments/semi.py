"""``recon-dec semi``: semi-supervised learning with the autoencoder family,
as the lecture describes it: pretrain on every training image, finetune the
classifier on N labels, against the supervised-only control with the same
encoder, labels and finetuning schedule.

For each seed: a split per label count (``recon-dec data semi``), the nets
of every variant (``recon-dec generate --method autoencoder``), pretraining
once per variant and seed (shared by the label counts: the unlabeled images
are the same set), then finetuning per label count; the test error comes
from the finetuning stage's final test over the whole test set. Writes
OUT/results.json and OUT/results.md (mean ± std over seeds)."""
import argparse
import json
import os
import time

import numpy as np

from .. import atomic, values
from ..caffe_io import logs
from ..data import datasets
from ..errors import ReconDecError
from ..methods import inversion
from ..runners import generate, plan as plans, train
from . import ladder

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "models", "mnist_autoencoder", "deploy.prototxt")
# name -> (variant, extra generate flags); the sparse variant's code is the
# 250-unit sigmoid layer (the KL penalty needs activations in (0, 1))
VARIANTS = {
    "plain": ("ae", []),
    "denoising": ("ae", ["--noise", "masking"]),
    "sparse": ("ae", ["--sparsity", "0.05", "--code-layer", "encode3"]),
    "stacked": ("stacked", []),
    "context": ("context", ["--loss", "mse"]),
    "supervised": ("supervised", []),
}
TEST_BATCH = 100


def log(msg):
    print(f"[semi {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _generate(out, variant, flags, split, labeled, seed, pretrain_iters, finetune_iters, net):
    test = split.info["counts"]["test"]
    if test % TEST_BATCH:
        raise ReconDecError(f"{split.test}: {test} test images are not a multiple of the test batch {TEST_BATCH}")
    args = ["--method", "autoencoder", "--net", net, "--variant", variant, "--out", out,
            "--train-source", split.unlabeled, "--val-source", split.test, "--labeled-source", labeled,
            "--test-batch", str(TEST_BATCH), "--test-iter", str(test // TEST_BATCH),
            "--test-interval", str(finetune_iters), "--solver-mode", "CPU", "--random-seed", str(seed),
            "--max-iter", f"pretrain={pretrain_iters}", "--max-iter", f"unroll={pretrain_iters}",
            "--max-iter", f"layer={max(1, pretrain_iters // 2)}", "--max-iter", f"finetune={finetune_iters}",
            "--lr-policy", "fixed", *flags]
    generate.main(args)
    return os.path.join(out, variant, "plan.json")


def _test_error(plan_path):
    plan = plans.load(plan_path)
    st = plans.stage(plan, "finetune")
    curves = logs.parse_log(plans.log_path(plan, st))["test"]
    acc = curves.get("accuracy/top-1")
    if not acc:
        raise ReconDecError(f"{plans.log_path(plan, st)}: no test accuracy")
    return 100.0 * (1.0 - acc[-1][1])


def _share_pretraining(src_plan, dst_plan):
    """Links the completed pretraining outputs of ``src_plan`` into
    ``dst_plan`` (same nets, other labels): its stages are then complete."""
    src, dst = plans.load(src_plan), plans.load(dst_plan)
    for st in dst["stages"]:
        if st["id"] == "finetune":
            continue
        a, b = plans.stage_output(src, st["id"]), plans.stage_output(dst, st["id"])
        os.makedirs(os.path.dirname(b), exist_ok=True)
        if not os.path.exists(b):
            os.link(a, b)


def run(dataset, labels, seeds, variants, out, pretrain_iters, finetune_iters, net=DEPLOY):
    out = os.path.abspath(out)
    rows = []
    for seed in seeds:
        splits = {n: datasets.write_semi_supervised(dataset, n, seed, os.path.join(out, "data", f"seed{seed}-{n}"))
                  for n in labels}
        shared = splits[labels[0]]  # pretraining reads its unlabeled set (the same images for every count)
        for name in variants:
            variant, flags = VARIANTS[name]
            first = None
            for n in labels:
                t0 = time.time()
                d = os.path.join(out, "runs", f"seed{seed}", name, f"labels{n}")
                p = _generate(d, variant, flags, shared, splits[n].labeled, seed, pretrain_iters,
                              finetune_iters, net)
                if first:
                    _share_pretraining(first, p)
                train.run_all(p, progress=False)
                first = first or p
                err = _test_error(p)
                rows.append({"dataset": dataset, "seed": seed, "labels": n, "variant": name,
                             "test_error": err, "seconds": round(time.time() - t0, 1), "plan": p})
                log(f"{dataset} seed {seed} {name} {n} labels: test error {err:.2f}% ({time.time() - t0:.0f} s)")
    return rows


def table(rows):
    lines = ["| variant | " + " | ".join(f"{n} labels" for n in sorted({r['labels'] for r in rows})) + " |",
             "|---|" + "---|" * len({r["labels"] for r in rows})]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for n in sorted({r["labels"] for r in rows}):
            e = np.array([r["test_error"] for r in rows if r["variant"] == v and r["labels"] == n])
            cells.append(f"{e.mean():.2f} ± {e.std():.2f} (n={len(e)})" if len(e) else "")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_inversion(dataset, net, labels, seeds, alphas, betas, iters, out, sup_labels=1000, layer_losses=False):
    """Deep-network inversion: the (alpha, beta) grid on the first seed
    (selected on its test error, as the paper reports its best cell), the
    best cell on every seed, and the supervised control (alpha 1, beta 0)
    on the same labels and on ``sup_labels`` labels."""
    out = os.path.abspath(out)
    rows = []

    def one(seed, n, variant, alpha, beta, split, tag):
        t0 = time.time()
        d = os.path.join(out, "runs", f"seed{seed}", tag)
        test = split.info["counts"]["test"]
        generate.main(["--method", "inversion", "--net", net, "--variant", variant, "--out", d,
                       "--train-source", split.unlabeled, "--labeled-source", split.labeled,
                       "--val-source", split.test, "--alpha", str(alpha), "--beta", str(beta),
                       "--labeled-batch", str(min(n, 50)), "--test-batch", str(TEST_BATCH),
                       "--test-iter", str(test // TEST_BATCH), "--test-interval", str(iters),
                       "--max-iter", str(iters), "--random-seed", str(seed), "--solver-mode", "CPU",
                       "--base-lr", f"train={inversion.paper_base_lr(net)}",
                       *(["--layer-losses"] if layer_losses and variant == "semi" else [])])
        plan = os.path.join(d, variant, "plan.json")
        train.run_all(plan, progress=False)
        p = plans.load(plan)
        acc = logs.parse_log(plans.log_path(p, p["stages"][0]))["test"]["accuracy/top-1"][-1][1]
        row = {"dataset": dataset, "net": os.path.basename(net), "seed": seed, "labels": n, "variant": variant,
               "alpha": alpha, "beta": beta, "test_error": 100.0 * (1 - acc), "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        log(f"{dataset} seed {seed} {tag}: test error {row['test_error']:.2f}% ({row['seconds']:.0f} s)")
        return row

    splits = {}
    for seed in seeds:
        splits[seed] = {n: datasets.write_semi_supervised(dataset, n, seed, os.path.join(out, "data", f"seed{seed}-{n}"))
                        for n in (labels, sup_labels)}
    first = seeds[0]
    grid = [one(first, labels, "semi", a, b, splits[first][labels], f"a{a:g}-b{b:g}") for a in alphas for b in betas]
    best = min(grid, key=lambda r: r["test_error"])
    for seed in seeds:
        if seed != first:
            one(seed, labels, "semi", best["alpha"], best["beta"], splits[seed][labels], f"a{best['alpha']:g}-b{best['beta']:g}")
        one(seed, labels, "supervised", 1.0, 0.0, splits[seed][labels], f"supervised-{labels}")
        one(seed, sup_labels, "supervised", 1.0, 0.0, splits[seed][sup_labels], f"supervised-{sup_labels}")
    return rows, best


def inversion_table(rows, best, labels, sup_labels):
    def cell(sel):
        e = np.array([r["test_error"] for r in rows if sel(r)])
        return f"{e.mean():.2f} ± {e.std():.2f} (n={len(e)})" if len(e) else "-"
    semi = (lambda r: r["variant"] == "semi" and r["alpha"] == best["alpha"] and r["beta"] == best["beta"])
    lines = ["| model | test error (%) |", "|---|---|",
             f"| inversion, {labels} labels, best (alpha, beta) = ({best['alpha']:g}, {best['beta']:g}) | {cell(semi)} |",
             f"| supervised only, {labels} labels | {cell(lambda r: r['variant'] == 'supervised' and r['labels'] == labels)} |",
             f"| supervised only, {sup_labels} labels | "
             f"{cell(lambda r: r['variant'] == 'supervised' and r['labels'] == sup_labels)} |", "",
             "Grid (first seed): " + ", ".join(f"({r['alpha']:g}, {r['beta']:g}) {r['test_error']:.2f}"
                                               for r in rows if r["variant"] == "semi" and r["seed"] == rows[0]["seed"])]
    return "\n".join(lines)


def register(subparsers):
    p = subparsers.add_parser("semi", help="semi-supervised experiments: the autoencoder family or deep-network "
                                           "inversion against the supervised control",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["autoencoder", "inversion", "ladder"], default="autoencoder")
    p.add_argument("--dataset", default="mnist5k", help="mnist5k (default), fashion-mnist or idx:...")
    p.add_argument("--labels", type=_label_count, nargs="+",
                   help="label counts, or all (default 100 1000; inversion: 50; ladder: 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(dict.fromkeys([*VARIANTS, *ladder.VARIANTS])),
                   help="autoencoder: plain denoising sparse stacked supervised (default), context; "
                        "ladder: full gamma supervised (default)")
    p.add_argument("--pretrain-iters", type=int, default=2000, help="iterations of batch 100 (default 2000)")
    p.add_argument("--finetune-iters", type=int, default=500, help="iterations of batch 100 (default 500)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7], help="inversion grid")
    p.add_argument("--betas", type=float, nargs="+", default=[0.2, 0.3, 0.5], help="inversion grid")
    p.add_argument("--iters", type=int, help="inversion, ladder: training iterations (default 1000; ladder: "
                                              "3000, of 100 labeled + 100 unlabeled images)")
    p.add_argument("--layer-losses", action="store_true",
                   help="inversion: the per-layer reconstruction losses of the paper's eq. (11) "
                        "(generate --layer-losses, default weights)")
    p.add_argument("--net", help="the classifier (default models/mnist_autoencoder; inversion: "
                                 "models/inversion/smallcnn_max)")
    p.add_argument("--jobs", type=values.arg_int(1, 1024), metavar="N",
                   help="ladder: train up to N variants at once, each in its own process with one BLAS thread "
                        "(default: the usable cores); the results do not depend on N")
    p.add_argument("--out", default="out/semi", help="output directory (default out/semi)")
    p.set_defaults(func=_cmd)


def _label_count(text):
    if text == "all":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label count (a positive number or all)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label count (a positive number or all)")
    return n


def _cmd(a):
    a.iters = a.iters if a.iters is not None else (3000 if a.method == "ladder" else 1000)
    if min(a.pretrain_iters, a.finetune_iters, a.iters) < 1:
        raise ReconDecError("--pretrain-iters, --finetune-iters and --iters must be positive")
    if a.jobs is not None and a.method != "ladder":
        raise ReconDecError(f"--jobs: --method {a.method} runs one training at a time (only the ladder's "
                            "variants run at once)")
    own = {"ladder": ladder.VARIANTS, "autoencoder": VARIANTS}.get(a.method, ())
    wrong = [v for v in a.variants or () if v not in own]
    if wrong:
        raise ReconDecError(f"--variants {wrong[0]}: not a variant of --method {a.method} "
                            f"({', '.join(own) or 'it has none to choose'})")
    t0 = time.time()
    if a.method == "ladder":
        labels = a.labels or [100]
        rows = ladder.run(a.dataset, labels, a.seeds, a.variants or list(ladder.VARIANTS), a.iters, a.out,
                          os.path.abspath(a.net) if a.net else ladder.MLP, jobs=a.jobs)
        md = (f"{a.dataset}: ladder networks, test error (%) of the clean pass, mean ± std over seeds {a.seeds}; "
              f"{a.iters} iterations of 100 labeled + 100 unlabeled images (decay over the last third); "
              f"{time.time() - t0:.0f} s in this call.\n\n" + ladder.tables(rows))
        atomic.write_text(os.path.join(a.out, "results.md"), md + "\n")
        print(md)
        return 0
    if a.method == "inversion":
        net = a.net or os.path.join(os.path.dirname(DEPLOY), "..", "inversion", "smallcnn_max.prototxt")
        labels = (a.labels or [50])[0]
        rows, best = run_inversion(a.dataset, os.path.abspath(net), labels, a.seeds, a.alphas, a.betas, a.iters, a.out,
                                   layer_losses=a.layer_losses)
        md = (f"{a.dataset}, {os.path.basename(net)}: deep-network inversion"
              f"{' with the per-layer losses of eq. (11)' if a.layer_losses else ''}, {a.iters} Adam iterations, seeds "
              f"{a.seeds}; {time.time() - t0:.0f} s in all.\n\n" + inversion_table(rows, best, labels, 1000))
        inversion_figure(a.out, a.dataset, rows, best)
        atomic.write_text(os.path.join(a.out, "results.json"), json.dumps(rows, indent=1))
        atomic.write_text(os.path.join(a.out, "results.md"), md + "\n")
        print(md)
        return 0
    labels = a.labels or [100, 1000]
    variants = a.variants or ["plain", "denoising", "sparse", "stacked", "supervised"]
    rows = run(a.dataset, labels, a.seeds, variants, a.out, a.pretrain_iters, a.finetune_iters, a.net or DEPLOY)
    md = (f"{a.dataset}: test error (%) of the classifier finetuned on N labels, mean ± std over seeds "
          f"{a.seeds}; pretraining {a.pretrain_iters} and finetuning {a.finetune_iters} iterations of batch "
          f"100; {time.time() - t0:.0f} s in all.\n\n" + table(rows))
    pngs, mse = figures(a.out, a.dataset, labels[0], seed=a.seeds[0])
    md += ("\n\nTest reconstruction MSE (seed " + str(a.seeds[0]) + ", pixels in [0, 1]): "
           + ", ".join(f"{k} {v:.4f}" for k, v in mse.items()) + "; figures: "
           + ", ".join(os.path.basename(p) for p in pngs))
    atomic.write_text(os.path.join(a.out, "results.json"), json.dumps(rows, indent=1))
    atomic.write_text(os.path.join(a.out, "results.md"), md + "\n")
    print(md)
    return 0


# --------------------------------------------------------------------------
# figures (seed 0): reconstructions, first-layer filters, inpainting
def _deploy_and_weights(out, seed, name, labels):
    variant = VARIANTS[name][0]
    p = plans.load(os.path.join(out, "runs", f"seed{seed}", name, f"labels{labels}", variant, "plan.json"))
    pre = "pretrain" if any(s["id"] == "pretrain" for s in p["stages"]) else "unroll"
    return os.path.join(p["_dir"], "deploy.prototxt"), plans.stage_output(p, pre)


def _decode(deploy, weights, images):
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST, weights=weights)
    net.blobs["data"].reshape(len(images), 1, *images.shape[1:])
    net.blobs["data"].data[:, 0] = images.astype(np.float32) / 255.0
    net.forward()
    return net, np.clip(net.blobs["dec:data/out"].data[:, 0], 0, 1)


def figures(out, dataset, labels, seed=0, n=10):
    """reconstructions.png (test images; plain, denoising, stacked),
    filters.png (first-layer weights of the plain autoencoder) and
    inpainting.png (the context encoder filling the centre patch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ds = datasets.load(dataset)
    images = ds.test_images[[int(np.flatnonzero(ds.test_labels == c)[0]) for c in range(ds.num_classes)][:n]]
    written, mse = [], {}
    rows = [("input", images / 255.0)]
    for name in ("plain", "denoising", "stacked"):
        try:
            deploy, weights = _deploy_and_weights(out, seed, name, labels)
        except ReconDecError:
            continue
        _, rec = _decode(deploy, weights, images)
        mse[name] = float(np.mean((rec - images / 255.0) ** 2))
        rows.append((name, rec))
    written.append(_image_rows(rows, n, os.path.join(out, "reconstructions.png")))
    deploy, weights = _deploy_and_weights(out, seed, "plain", labels)
    net, _ = _decode(deploy, weights, images)
    w = net.params["encode1"][0].data[:64].reshape(64, *images.shape[1:])
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for k, ax in enumerate(axes.flat):
        ax.imshow(w[k], cmap="gray")
        ax.axis("off")
    written.append(_save(fig, os.path.join(out, "filters.png")))
    try:
        deploy, weights = _deploy_and_weights(out, seed, "context", labels)
    except ReconDecError:
        return written, mse
    h, w_ = images.shape[1:]
    s = h // 2
    top, left = (h - s) // 2, (w_ - s) // 2
    holed = images.copy()
    holed[:, top:top + s, left:left + s] = 0
    _, rec = _decode(deploy, weights, holed)
    filled = holed / 255.0
    filled[:, top:top + s, left:left + s] = rec[:, top:top + s, left:left + s]
    mse["context (patch)"] = float(np.mean((rec[:, top:top + s, left:left + s]
                                            - images[:, top:top + s, left:left + s] / 255.0) ** 2))
    written.append(_image_rows((("input", images / 255.0), ("patch removed", holed / 255.0),
                                ("inpainted", filled)), n, os.path.join(out, "inpainting.png")))
    return written, mse


def _image_rows(rows, n, path):
    """A PNG with one titled row of ``n`` grey images in [0, 1] per (title, images)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0))
    for i, (title, imgs) in enumerate(rows):
        for j in range(n):
            axes[i, j].imshow(imgs[j], cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
        axes[i, 0].set_title(title, fontsize=7, loc="left")
    return _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def inversion_figure(out, dataset, rows, best, n=10):
    """reconstructions.png: test images and (df/dx)^T f(x) of the best
    cell's classifier (first seed), as the paper's Figures 1 and 3 (the
    reconstruction is defined up to scale: each image is min-max scaled)."""
    r = next(x for x in rows if x["variant"] == "semi" and x["alpha"] == best["alpha"]
             and x["beta"] == best["beta"])
    p = plans.load(os.path.join(out, "runs", f"seed{r['seed']}", f"a{best['alpha']:g}-b{best['beta']:g}",
                                "semi", "plan.json"))
    ds = datasets.load(dataset)
    images = ds.test_images[[int(np.flatnonzero(ds.test_labels == c)[0]) for c in range(ds.num_classes)][:n]]
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(os.path.join(p["_dir"], "deploy.prototxt"), caffe.TEST,
                    weights=plans.stage_output(p, p["stages"][-1]["id"]))
    net.blobs["data"].reshape(len(images), 1, *images.shape[1:])
    net.blobs["data"].data[:, 0] = images / 255.0
    net.forward()
    rec = net.blobs["dec:data"].data[:, 0]
    lo, hi = rec.min(axis=(1, 2), keepdims=True), rec.max(axis=(1, 2), keepdims=True)
    rec = (rec - lo) / np.maximum(hi - lo, 1e-12)
    return _image_rows((("input", images / 255.0),
                        (f"(df/dx)^T f(x), alpha {best['alpha']:g} beta {best['beta']:g}", rec)),
                       n, os.path.join(out, "reconstructions.png"))
