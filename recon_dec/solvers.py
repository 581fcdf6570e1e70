"""Solvers and the stage plan (Section 4.1 of the paper).

Steps: 2 = layerwise decoders with the encoder frozen, 3 = decoder
finetuning of the first/all chains with the encoder frozen, 4 = joint
finetuning (the baseline is step 4 without decoder). ``recon`` = an
inversion net of Section 4.2 (decoder trained, encoder frozen).

Caffe's solver has one ``base_lr``; the per-macro-layer learning rates of
Table S-1 are therefore each decoder layer's ``lr_mult`` relative to it."""
import math

from . import prototxt
from .decoders import paper_step2_lr
from .errors import ReconDecError

# What the paper publishes is marked; everything else is our choice.
STAGE_DEFAULTS = {
    2: dict(batch=16, iter_size=1, base_lr=1e-8, lr_policy="fixed", gamma=0.1, stepsize=0,
            max_iter=80000, weight_decay=5e-4, snapshot=10000, momentum=0.9, random_seed=-1),
    3: dict(batch=16, iter_size=1, base_lr=1e-4, lr_policy="fixed", gamma=0.1, stepsize=0,
            max_iter=40000, weight_decay=5e-4, snapshot=10000, momentum=0.9, random_seed=-1),
    4: dict(batch=16, iter_size=4, base_lr=1e-4, lr_policy="step", gamma=0.1, stepsize=160000,
            max_iter=320000, weight_decay=5e-4, snapshot=10000, momentum=0.9, random_seed=-1),
    "recon": dict(batch=16, iter_size=1, base_lr=1e-8, lr_policy="fixed", gamma=0.1, stepsize=0,
                  max_iter=80000, weight_decay=5e-4, snapshot=10000, momentum=0.9, random_seed=-1),
}

PROVENANCE = """\
| setting | value | source |
|---|---|---|
| momentum, all steps | 0.9 | published (Section 4.1) |
| step-2 mini-batch | 16 | published |
| step-2 loss weights | 1 for every reconstruction loss | published |
| step-2 per-macro-layer learning rates | 3e-9, 1e-8, 3e-12, 1e-12, 1e-11 (macro-layers 1-5) | published (Table S-1, VGG16); other nets reuse them by macro-layer index: **not published, our choice** |
| step-2 base_lr | 1e-8; decoder k gets lr_mult = rate_k / base_lr (biases x2) | **not published, our choice** (only the products matter) |
| step-2 iterations | 80000 (about one ImageNet epoch at batch 16), fixed LR | **not published, our choice** ("about one epoch", no annealing) |
| step-3 base_lr, lr_mult | 1e-4; decoder k lr_mult = rate_k / 1e-8, so LR x image-loss weight (1e-4) equals step 2's rate | **not published, our choice** |
| step-3 batch, iterations | 16, 40000, fixed LR | **not published, our choice** |
| step-4 effective batch | 64 | published; written as batch 16 x iter_size 4 (VGG16 + decoder at 64 does not fit one GPU): **our choice** |
| step-4 base_lr, schedule | 1e-4, step policy x0.1 every 160000 iterations | **not published, our choice** (VGG's own final LR was 1e-4) |
| step-4 iterations | 320000 (about 16 epochs at 64) | **not published, our choice** (SWWAE-all reached Table 1 in ~16 epochs) |
| weight decay, all steps | 5e-4 (VGG's); decoder biases and frozen layers decay_mult 0 | **not published, our choice** |
| loss weights (step 3/4) | image 1e-4, pool1-3 1e-12, pool4 1e-10 | published (VGG16); deeper nets reuse pool4's: **our choice** |
| solver random_seed | unset (Caffe seeds from the clock); `--random-seed` makes fillers and dropout reproducible | our option |
| inversion nets (Section 4.2) | image loss weight 1, base_lr 1e-8, batch 16, 80000 iterations | **not published, our choice** |
"""


def stage_settings(step, overrides):
    """Defaults of a stage merged with ``overrides`` ({key: {step: value}}
    where step "all" applies to every stage)."""
    s = dict(STAGE_DEFAULTS[step])
    for key, per in (overrides or {}).items():
        if key not in s:
            continue
        if step in per:
            s[key] = per[step]
        elif str(step) in per:
            s[key] = per[str(step)]
        elif "all" in per:
            s[key] = per["all"]
    return s


def step2_lr_scales(enc, base_lr, rates=None):
    """lr_mult factor of each macro-layer's decoder: its Table S-1 rate (or
    ``rates[k]``) divided by the solver's base_lr."""
    rates = rates or {}
    return {m.index: rates.get(m.index, paper_step2_lr(m.index)) / base_lr for m in enc.macros}


def solver_text(net, settings, snapshot_prefix, test_iter=None, test_interval=None, solver_mode="GPU"):
    """A solver prototxt (from prototxt_templates/solver.prototxt), checked
    by parsing it as a SolverParameter."""
    from google.protobuf import text_format
    from caffe.proto import caffe_pb2
    policy = ""
    if settings["lr_policy"] == "step":
        policy = f"gamma: {settings['gamma']:g}\nstepsize: {int(settings['stepsize'])}"
    elif settings["lr_policy"] in ("exp", "inv"):
        policy = f"gamma: {settings['gamma']:g}" + ("\npower: 0.75" if settings["lr_policy"] == "inv" else "")
    elif settings["lr_policy"] != "fixed":
        raise ReconDecError(f"--lr-policy: {settings['lr_policy']!r} is not one of fixed, step, exp, inv")
    test = ""
    if test_iter:
        test = f"test_iter: {int(test_iter)}\ntest_interval: {int(test_interval)}\ntest_initialization: false"
    max_iter = int(settings["max_iter"])
    text = prototxt.render(
        "solver.prototxt", net=net, base_lr=f"{settings['base_lr']:g}", lr_policy=settings["lr_policy"],
        policy_params=policy, momentum=f"{settings['momentum']:g}",
        weight_decay=f"{settings['weight_decay']:g}", iter_size=int(settings["iter_size"]),
        max_iter=max_iter, display=20, snapshot=min(int(settings["snapshot"]), max_iter),
        snapshot_prefix=snapshot_prefix, test=test, solver_mode=solver_mode,
        random_seed=(f"random_seed: {int(settings['random_seed'])}" if settings["random_seed"] >= 0 else ""))
    text = "\n".join(l for l in text.splitlines() if l.strip()) + "\n"
    try:
        text_format.Merge(text, caffe_pb2.SolverParameter())
    except text_format.ParseError as e:  # a bad override value
        raise ReconDecError(f"solver for {net}: {e}")
    return text


def stage_output(step_name, max_iter):
    return f"snapshots/{step_name}_iter_{int(max_iter)}.caffemodel"


def test_iters(val_size, test_batch):
    return max(1, math.ceil(val_size / test_batch))
