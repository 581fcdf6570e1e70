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
import json
import os
import time

import numpy as np

from .. import atomic
from ..caffe_io import logs
from ..data import datasets
from ..errors import ReconDecError
from ..runners import plan as plans, train

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
    from .. import cli
    test = split.info["counts"]["test"]
    if test % TEST_BATCH:
        raise ReconDecError(f"{split.test}: {test} test images are not a multiple of the test batch {TEST_BATCH}")
    args = ["generate", "--method", "autoencoder", "--net", net, "--variant", variant, "--out", out,
            "--train-source", split.unlabeled, "--val-source", split.test, "--labeled-source", labeled,
            "--test-batch", str(TEST_BATCH), "--test-iter", str(test // TEST_BATCH),
            "--test-interval", str(finetune_iters), "--solver-mode", "CPU", "--random-seed", str(seed),
            "--max-iter", f"pretrain={pretrain_iters}", "--max-iter", f"unroll={pretrain_iters}",
            "--max-iter", f"layer={max(1, pretrain_iters // 2)}", "--max-iter", f"finetune={finetune_iters}",
            "--lr-policy", "fixed", *flags]
    if cli.main(args) != 0:
        raise ReconDecError(f"{out}: generate failed for {variant} {' '.join(flags)}")
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


def register(subparsers):
    p = subparsers.add_parser("semi", help="semi-supervised learning with the autoencoder family (pretrain, "
                                           "finetune on N labels) against the supervised control",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist5k", help="mnist5k (default), fashion-mnist or idx:...")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["plain", "denoising", "sparse", "stacked", "supervised"],
                   choices=list(VARIANTS))
    p.add_argument("--pretrain-iters", type=int, default=2000, help="iterations of batch 100 (default 2000)")
    p.add_argument("--finetune-iters", type=int, default=500, help="iterations of batch 100 (default 500)")
    p.add_argument("--net", default=DEPLOY, help="the classifier (default models/mnist_autoencoder)")
    p.add_argument("--out", default="out/semi", help="output directory (default out/semi)")
    p.set_defaults(func=_cmd)


def _cmd(a):
    if a.pretrain_iters < 1 or a.finetune_iters < 1:
        raise ReconDecError("--pretrain-iters and --finetune-iters must be positive")
    t0 = time.time()
    rows = run(a.dataset, a.labels, a.seeds, a.variants, a.out, a.pretrain_iters, a.finetune_iters, a.net)
    md = (f"{a.dataset}: test error (%) of the classifier finetuned on N labels, mean ± std over seeds "
          f"{a.seeds}; pretraining {a.pretrain_iters} and finetuning {a.finetune_iters} iterations of batch "
          f"100; {time.time() - t0:.0f} s in all.\n\n" + table(rows))
    atomic.write_text(os.path.join(a.out, "results.json"), json.dumps(rows, indent=1))
    atomic.write_text(os.path.join(a.out, "results.md"), md + "\n")
    print(md)
    return 0
