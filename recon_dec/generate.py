"""``recon-dec generate``: from a classifier's deploy prototxt, the augmented
networks of every variant (train_val + deploy), their per-stage train nets,
solvers and ``plan.json``, the Section 4.2 inversion nets, and a README.

Everything is built and validated in memory first; files are written only
when all of it succeeded (atomically, one by one)."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from . import atomic, decoders, encoder as encoder_mod, inversion, prototxt, solvers
from .decoders import VARIANTS, KNOWN, IMAGE_TARGET
from .errors import ReconDecError

PLAN_FORMAT = "recon-dec-plan/1"
VGG_MEAN = (103.939, 116.779, 123.68)
STEPS = {  # variant wiring -> the stages it trains (Section 4.1)
    "first": [2, 3, 4], "all": [2, 3, 4], "layerwise": [2, 4], None: [4],
}
STAGE_NAMES = {2: "step2-layerwise-decoders", 3: "step3-decoder-finetune", 4: "step4-joint-finetune"}


@dataclass
class Options:
    """Everything but the net and the variants. Per-stage settings are
    dicts {step: value} with step 2, 3, 4, "recon" or "all"."""
    weights: str = None              # pretrained caffemodel (checked to exist)
    data: str = "lmdb"               # lmdb | imagelist
    train_source: str = None
    val_source: str = None
    root_folder: str = ""            # imagelist: prefix of the list's paths
    resize: int = 0                  # imagelist: resize to resize x resize first
    scale_range: tuple = (256, 512)  # scale-jitter: random shorter edge in TRAIN (VGG)
    test_size: int = 256             # scale-jitter: shorter edge in TEST
    square_size: int = None          # scale-jitter: AlexNet's centre square size (mode CENTER_SQUARE)
    threads: int = 4                 # scale-jitter: decoding threads per batch
    mean: tuple = None               # per-channel mean; default VGG's (3 channels) or none
    scale: float = 1.0               # transform_param scale
    crop: int = None                 # default: the (possibly overridden) input size
    mirror: bool = True
    input_size: int = None           # H = W of the input (overrides the deploy file)
    deploy_batch: int = None         # batch of the generated deploy nets
    test_batch: int = 10
    test_iter: int = 100
    test_interval: int = 5000
    solver_mode: str = "GPU"
    stage: dict = field(default_factory=dict)  # {key: {step: value}}, keys as solvers.STAGE_DEFAULTS
    step2_lr: dict = field(default_factory=dict)   # macro-layer k -> rate (Table S-1 override)
    loss_weights: dict = field(default_factory=dict)  # level j -> weight (0 = image)
    recon: bool = True
    recon_points: str = "auto"       # auto | macro | layer
    draw: bool = False


# --------------------------------------------------------------------------
# nets
def _net(name, layers):
    from caffe.proto import caffe_pb2
    n = caffe_pb2.NetParameter()
    n.name = name
    n.layer.extend(layers)
    return n


def input_layer(enc, batch):
    _, c, h, w = enc.input_shape
    l = decoders.layer("data", "Input", [], ["data"])
    l.input_param.shape.add().dim.extend([batch, c, h, w])
    return l


def data_layers(enc, opts, batch, phases=None):
    _, c, h, w = enc.input_shape
    sources = {"TRAIN": _abs_or(opts.train_source, "TRAIN_SOURCE_NOT_SET")}
    phases = phases or (["TRAIN", "TEST"] if opts.val_source else ["TRAIN"])
    if opts.val_source:
        sources["TEST"] = _abs_or(opts.val_source, None)
    mean = opts.mean if opts.mean is not None else (VGG_MEAN if c == 3 else ())
    spec = dict(kind=opts.data, sources=sources, batch={"TRAIN": batch, "TEST": opts.test_batch},
                crop=opts.crop or h, mirror=opts.mirror, mean=list(mean), scale=opts.scale,
                root=_abs_or(opts.root_folder, "") + ("/" if opts.root_folder else ""),
                resize=opts.resize,
                jitter=dict(min_size=opts.scale_range[0], max_size=opts.scale_range[1],
                            test_size=opts.test_size, square_size=opts.square_size, threads=opts.threads))
    return prototxt.data_layers(spec, c, phases)


def _abs_or(path, default):
    return os.path.abspath(path) if path else default


def scaled_data():
    """``data/scaled`` = data x 1/255, the image reconstruction target."""
    l = decoders.layer(IMAGE_TARGET, "Power", ["data"], [IMAGE_TARGET])
    l.power_param.scale = 1.0 / 255
    return l


def heads(enc, test):
    """Softmax loss (weight 1 everywhere) and, in TEST, top-1/top-5 accuracy."""
    from caffe.proto import caffe_pb2
    out = enc.output_blob
    loss = decoders.layer("loss", "SoftmaxWithLoss", [out, "label"], ["loss"])
    loss.loss_weight.append(1.0)
    layers = [loss]
    if test:
        for k in (1, 5):
            a = decoders.layer(f"accuracy/top-{k}", "Accuracy", [out, "label"], [f"accuracy/top-{k}"])
            a.include.add().phase = caffe_pb2.TEST
            if k != 1:
                a.accuracy_param.top_k = k
            layers.append(a)
    return layers


def _uses_image_target(layers):
    return any(IMAGE_TARGET in l.bottom for l in layers)


def stage_net(enc, variant, step, opts):
    """train_val NetParameter of one stage of a variant."""
    mode, wire = VARIANTS[variant]
    settings = solvers.stage_settings(step, opts.stage)
    frozen = step in (2, 3)
    dec_layers = []
    if mode is not None:
        if step == 2:
            weights = {j: 1.0 for j in range(len(enc.macros))}  # published: all 1 in step 2
            scales = solvers.step2_lr_scales(enc, settings["base_lr"], opts.step2_lr)
            dec_layers, _ = decoders.build(enc, variant, weights, scales, wiring="layerwise")
        else:
            weights = decoders.variant_loss_weights(enc, variant, opts.loss_weights)
            # step 3: Table S-1 rates relative to 1e-8 (see solvers.PROVENANCE)
            scales = (solvers.step2_lr_scales(enc, 1e-8, opts.step2_lr) if step == 3 else None)
            dec_layers, _ = decoders.build(enc, variant, weights, scales)
    layers = data_layers(enc, opts, settings["batch"])
    if _uses_image_target(dec_layers):
        layers.append(scaled_data())
    layers += encoder_mod.encoder_layers(enc, frozen, masks=(mode == KNOWN))
    layers += dec_layers
    layers += heads(enc, bool(opts.val_source))
    return _net(f"{variant}-step{step}", layers)


def deploy_net(enc, variant, opts):
    """The step-4 net for inference: classifier + decoders, no data or
    losses; layer names equal the authors' so their caffemodels load."""
    mode, _ = VARIANTS[variant]
    dec_layers = decoders.build(enc, variant, {})[0] if mode else []
    layers = [input_layer(enc, opts.deploy_batch or enc.input_shape[0])]
    layers += encoder_mod.encoder_layers(enc, False, masks=(mode == KNOWN))
    layers += dec_layers
    layers.append(decoders.layer("prob", "Softmax", [enc.output_blob], ["prob"]))
    return _net(f"{variant}-deploy", layers)


def _param_names(net):
    return [l.name for l in net.layer if l.type in ("Convolution", "InnerProduct", "Deconvolution", "BatchNorm", "Scale")]


# --------------------------------------------------------------------------
# plans
def variant_files(enc, variant, opts, pretrained):
    """{relative path: text} of one variant directory, and its plan dict."""
    mode, wire = VARIANTS[variant]
    files = {}
    stages = []
    enc_names = [l.name for l in enc.param_layers]
    outputs = {}
    for step in STEPS[wire]:
        settings = solvers.stage_settings(step, opts.stage)
        net = stage_net(enc, variant, step, opts)
        d = f"step{step}"
        files[f"{d}/train_val.prototxt"] = str(net)
        prefix = f"snapshots/step{step}"
        test_iter = opts.test_iter if opts.val_source else None
        files[f"{d}/solver.prototxt"] = solvers.solver_text(
            f"{d}/train_val.prototxt", settings, prefix, test_iter, opts.test_interval, opts.solver_mode)
        dec_names = [n for n in _param_names(net) if n.startswith("dec:")]
        init, requires = [], []
        if step == 2 or wire is None:
            if pretrained:
                init.append({"weights": "@pretrained", "layers": enc_names})
        elif step == 3:
            if pretrained:
                init.append({"weights": "@pretrained", "layers": enc_names})
            init.append({"weights": "@stage:2", "layers": dec_names})
            requires = [2]
        else:  # step 4 after 3 (first/all) or 2 (layerwise)
            prev = 3 if 3 in STEPS[wire] else 2
            init.append({"weights": f"@stage:{prev}", "layers": enc_names + dec_names})
            requires = [prev]
        out = solvers.stage_output(f"step{step}", settings["max_iter"])
        outputs[step] = out
        stages.append({
            "step": step, "name": STAGE_NAMES[step],
            "description": _describe_stage(variant, step),
            "solver": f"{d}/solver.prototxt", "train_net": f"{d}/train_val.prototxt",
            "init": init, "requires": requires, "snapshot_prefix": prefix,
            "max_iter": int(settings["max_iter"]), "output": out,
            "batch": int(settings["batch"]), "iter_size": int(settings["iter_size"]),
        })
    files["train_val.prototxt"] = files[f"step{STEPS[wire][-1]}/train_val.prototxt"]
    files["deploy.prototxt"] = str(deploy_net(enc, variant, opts))
    plan = {"format": PLAN_FORMAT, "variant": variant, "source_net": os.path.abspath(enc.path),
            "pretrained": pretrained, "stages": stages}
    files["plan.json"] = json.dumps(plan, indent=2) + "\n"
    return files, plan


def _describe_stage(variant, step):
    mode, wire = VARIANTS[variant]
    kind = "SWWAE" if mode == KNOWN else "SAE"
    if step == 2:
        return f"{kind}-layerwise decoders, encoder frozen (lr_mult 0), loss weights 1, Table S-1 rates"
    if step == 3:
        return f"{kind}-{wire} decoder initialised from step 2 and finetuned, encoder frozen"
    if wire is None:
        return "baseline: the classifier finetuned without decoder"
    return f"{kind}-{wire}: encoder and decoder finetuned jointly, paper loss weights"


def _caffe_cmd(stage, plan):
    ws = []
    for i in stage["init"]:
        w = i["weights"]
        if w == "@pretrained":
            ws.append(plan["pretrained"])
        elif w.startswith("@stage:"):
            s = int(w.split(":")[1])
            ws.append(next(x["output"] for x in plan["stages"] if x["step"] == s))
        else:
            ws.append(w)
    cmd = f"caffe train -solver {stage['solver']}"
    return cmd + (f" -weights {','.join(ws)}" if ws else "")


# --------------------------------------------------------------------------
def _recon_mode(enc, opts):
    if opts.recon_points != "auto":
        return opts.recon_points
    first = enc.macros[0].convs[0]
    stride = encoder_mod.conv_geometry(first.param.convolution_param)[1]
    # AlexNet-style nets (strided conv1) are inverted after every layer, as in Section 4.2
    return "layer" if stride != (1, 1) else "macro"


def build_all(net_path, variants, opts):
    """Everything to write, as {relative path: text}, plus a summary."""
    if opts.weights is not None and not os.path.isfile(opts.weights):
        raise ReconDecError(f"{opts.weights}: --weights file does not exist")
    shape = None
    if opts.input_size or opts.deploy_batch:
        n, c, h, w = encoder_mod.prototxt.input_shape(prototxt.load(net_path), net_path)
        if opts.input_size:
            h = w = opts.input_size
        shape = (opts.deploy_batch or n, c, h, w)
    enc = encoder_mod.load_encoder(net_path, shape)
    pretrained = os.path.abspath(opts.weights) if opts.weights else None
    files = {}
    plans = {}
    for v in variants:
        vf, plan = variant_files(enc, v, opts, pretrained)
        plans[v] = plan
        files.update({f"{v}/{k}": t for k, t in vf.items()})
    recon = {}
    if opts.recon:
        recon = inversion.build(enc, opts, _recon_mode(enc, opts), pretrained)
        files.update({f"recon/{k}": t for k, t in recon["files"].items()})
    files["README.md"] = readme(enc, variants, plans, recon, opts, files)
    return enc, files, plans, recon


def generate(net_path, variants, out_dir, options=None):
    """Builds every net for ``variants`` (names from decoders.VARIANTS, or
    ["all"]) and writes them under ``out_dir``. Returns a dict: encoder (the
    analysis), files (absolute paths written), plans ({variant: absolute
    plan.json path}), recon_plans ({"<variant>/layer<k>": plan path})."""
    opts = options or Options()
    variants = _expand(variants)
    enc, files, plans, recon = build_all(os.fspath(net_path), variants, opts)
    out_dir = os.path.abspath(out_dir)
    written = []
    for rel, text in files.items():  # only now, after everything validated
        path = os.path.join(out_dir, rel)
        atomic.write_text(path, text)
        written.append(path)
    result = {"encoder": enc, "analysis": enc.describe(), "files": written, "out_dir": out_dir,
              "plans": {v: os.path.join(out_dir, v, "plan.json") for v in variants},
              "recon_plans": {k: os.path.join(out_dir, "recon", p) for k, p in recon.get("plans", {}).items()}}
    if opts.draw:
        result["drawn"] = draw(out_dir, [p for p in written if p.endswith(".prototxt") and "solver" not in p])
    return result


def _expand(variants):
    if isinstance(variants, str):
        variants = [variants]
    out = []
    for v in variants:
        for x in (VARIANTS if v == "all" else [v]):
            if x not in VARIANTS:
                raise ReconDecError(f"--variant: unknown variant {x!r} (one of {', '.join(VARIANTS)}, all)")
            if x not in out:
                out.append(x)
    return out


# --------------------------------------------------------------------------
# pydot reads "name:port" in node names, so every "dec:..." blob would
# collapse into one node "dec"; the drawings use a look-alike colon instead.
DRAWN_COLON = "\u2236"


def drawable(param):
    """``param`` with the colons of layer and blob names replaced for pydot."""
    for l in param.layer:
        l.name = l.name.replace(":", DRAWN_COLON)
        for names in (l.top, l.bottom):
            names[:] = [b.replace(":", DRAWN_COLON) for b in names]
    return param


def draw(out_dir, nets):
    """Renders each net to a PNG beside it with pycaffe's caffe.draw (Caffe's
    draw_net.py), written atomically. Needs graphviz's ``dot``."""
    if shutil.which("dot") is None:
        print("recon-dec: --draw skipped: graphviz `dot` is not installed", file=sys.stderr)
        return []
    from caffe import draw as caffe_draw
    drawn = []
    for n in nets:
        param = drawable(prototxt.parse_text(open(n).read(), n))
        png = n[: -len(".prototxt")] + ".png"
        atomic.write_bytes(png, caffe_draw.draw_net(param, "LR", ext="png"))
        drawn.append(png)
    return drawn


def readme(enc, variants, plans, recon, opts, files):
    lines = ["# Generated by `recon-dec generate`", "",
             "Augmented networks of Zhang, Lee & Lee (ICML 2016) for the classifier below.", "",
             "## Macro-layer analysis", "", "```", enc.describe(), "```", "",
             "## Training stages", "",
             "Run each stage from the variant's directory (paths in the solvers are relative to it), "
             "or let `recon-dec train <variant>/plan.json --all` do it (it resumes and checks prerequisites).", ""]
    for v in variants:
        lines.append(f"### {v}")
        lines.append("")
        for s in plans[v]["stages"]:
            lines.append(f"- step {s['step']} ({s['description']}): "
                         f"`cd {v} && {_caffe_cmd(s, plans[v])}` -> `{s['output']}`")
        lines.append("")
    if not plans or not next(iter(plans.values()))["pretrained"]:
        lines += ["No `--weights` was given: the encoder starts from its fillers "
                  "(msra); frozen-encoder stages then make little sense.", ""]
    if recon:
        lines += ["## Inversion nets (Section 4.2)", "",
                  "Decoder trained with the encoder frozen, image loss only (weight 1).", ""]
        for k, p in recon["plans"].items():
            d = os.path.dirname(k)
            lines.append(f"- `recon/{d}`: {recon['describe'][k]}: "
                         f"`cd recon/{d} && caffe train -solver solver.prototxt"
                         + (f" -weights {recon['pretrained']}" if recon['pretrained'] else "") + "`")
        lines.append("")
    lines += ["## Settings and where they come from", "", solvers.PROVENANCE, "",
              "Override with `--base-lr`, `--max-iter`, `--batch`, `--iter-size`, `--weight-decay`, "
              "`--lr-policy`, `--stepsize`, `--gamma` (each `VALUE` or `STEP=VALUE`), "
              "`--step2-lr K=RATE`, `--loss-weight LEVEL=W`.", "",
              "## Files", ""]
    for rel in sorted(list(files) + ["README.md"]):
        lines.append(f"- `{rel}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# command line
def _per_stage(values, cast, flag):
    """["1e-4", "2=1e-8", "recon=5"] -> {"all": 1e-4, 2: 1e-8, "recon": 5}."""
    out = {}
    for v in values or []:
        if "=" in v:
            k, x = v.split("=", 1)
            k = k.strip()
            key = int(k) if k.isdigit() else k
            if key not in (2, 3, 4, "recon", "all"):
                raise ReconDecError(f"{flag}: stage {k!r} is not 2, 3, 4, recon or all")
        else:
            key, x = "all", v
        try:
            out[key] = cast(x)
        except ValueError:
            raise ReconDecError(f"{flag}: {x!r} is not a valid value")
    return out


def _pairs(values, flag):
    out = {}
    for v in values or []:
        try:
            k, x = v.split("=", 1)
            out[int(k)] = float(x)
        except ValueError:
            raise ReconDecError(f"{flag}: expected K=VALUE, got {v!r}")
    return out


def _scale_range(text):
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ReconDecError(f"--scale-range: {text!r} is not MIN,MAX") from None
    if not 0 < lo <= hi:
        raise ReconDecError(f"--scale-range: need 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def options_from_args(a):
    stage = {}
    for key, flag, cast in (("base_lr", "--base-lr", float), ("max_iter", "--max-iter", int),
                            ("batch", "--batch", int), ("iter_size", "--iter-size", int),
                            ("weight_decay", "--weight-decay", float), ("lr_policy", "--lr-policy", str),
                            ("stepsize", "--stepsize", int), ("gamma", "--gamma", float),
                            ("snapshot", "--snapshot", int), ("random_seed", "--random-seed", int)):
        per = _per_stage(getattr(a, key), cast, flag)
        if per:
            stage[key] = per
    mean = None
    if a.mean is not None:
        try:
            mean = tuple(float(x) for x in a.mean.split(",") if x.strip())
        except ValueError:
            raise ReconDecError(f"--mean: {a.mean!r} is not a comma-separated list of numbers")
    return Options(weights=a.weights, data=a.data, train_source=a.train_source, val_source=a.val_source,
                   root_folder=a.root_folder, resize=a.resize, mean=mean,
                   scale_range=_scale_range(a.scale_range), test_size=a.test_size,
                   square_size=a.square_size, threads=a.threads, scale=a.scale, crop=a.crop,
                   mirror=not a.no_mirror, input_size=a.input_size, deploy_batch=a.deploy_batch,
                   test_batch=a.test_batch, test_iter=a.test_iter, test_interval=a.test_interval,
                   solver_mode=a.solver_mode, stage=stage, step2_lr=_pairs(a.step2_lr, "--step2-lr"),
                   loss_weights=_pairs(a.loss_weight, "--loss-weight"), recon=not a.no_recon,
                   recon_points=a.recon_points, draw=a.draw)


def register(subparsers):
    p = subparsers.add_parser(
        "generate", help="write the augmented nets, solvers and stage plans of a classifier",
        description="From a classifier's deploy prototxt (VGG16, AlexNet, ... in the new or the legacy "
                    "V1 format) write, for each variant, the step-4 train_val/deploy nets, every stage's "
                    "train net and solver, and plan.json; plus the Section 4.2 inversion nets and README.md. "
                    "Nothing is written if any check fails. Per-stage options take VALUE (every stage) or "
                    "STEP=VALUE with STEP 2, 3, 4 or recon, and may be repeated.")
    p.add_argument("--net", required=True, help="deploy prototxt of the classifier")
    p.add_argument("--variant", action="append", required=True,
                   help=f"one of {', '.join(VARIANTS)} or all (repeatable)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", help="pretrained caffemodel of the classifier (must exist)")
    p.add_argument("--data", choices=["lmdb", "imagelist", "scale-jitter"], default="lmdb",
                   help="data layer template: Caffe's LMDB Data layer, ImageData list, or our "
                        "ScaleJitterData layer on an encoded-image LMDB (the paper's augmentation; "
                        "default lmdb)")
    p.add_argument("--scale-range", default="256,512",
                   help="scale-jitter: MIN,MAX of the random shorter edge in TRAIN (default 256,512)")
    p.add_argument("--test-size", type=int, default=256,
                   help="scale-jitter: shorter edge in TEST (default 256)")
    p.add_argument("--square-size", type=int,
                   help="scale-jitter: AlexNet mode, centre square resized to NxN (e.g. 256)")
    p.add_argument("--threads", type=int, default=4, help="scale-jitter: decoding threads per batch")
    p.add_argument("--train-source", help="training LMDB directory or image list")
    p.add_argument("--val-source", help="validation LMDB / list; adds a TEST phase with top-1/top-5 accuracy")
    p.add_argument("--root-folder", default="", help="imagelist: folder the list's paths are relative to")
    p.add_argument("--resize", type=int, default=0, help="imagelist: resize images to NxN before cropping (0: keep)")
    p.add_argument("--mean", help="mean values B,G,R (or one value for grayscale); default VGG's for 3 channels")
    p.add_argument("--scale", type=float, default=1.0, help="transform_param scale applied after mean subtraction")
    p.add_argument("--crop", type=int, help="crop size (default: the input size)")
    p.add_argument("--no-mirror", action="store_true", help="no random mirroring in TRAIN")
    p.add_argument("--input-size", type=int, help="override the input height = width of the deploy file")
    p.add_argument("--deploy-batch", type=int, help="batch of the generated deploy nets (default the source's)")
    p.add_argument("--batch", action="append", help="training batch per stage (default 2=16 3=16 4=16 recon=16)")
    p.add_argument("--iter-size", action="append", help="gradient accumulation per stage (default 4=4: batch 64)")
    p.add_argument("--test-batch", type=int, default=10, help="TEST batch (default 10)")
    p.add_argument("--test-iter", type=int, default=100, help="TEST iterations per test (default 100)")
    p.add_argument("--test-interval", type=int, default=5000, help="iterations between tests (default 5000)")
    p.add_argument("--base-lr", action="append", help="solver base_lr per stage (defaults: see README)")
    p.add_argument("--max-iter", action="append", help="iterations per stage, e.g. 2=20000")
    p.add_argument("--weight-decay", action="append", help="weight decay per stage (default 5e-4)")
    p.add_argument("--lr-policy", action="append", help="fixed|step|exp|inv per stage")
    p.add_argument("--stepsize", action="append", help="step policy: iterations per LR drop")
    p.add_argument("--gamma", action="append", help="LR drop factor")
    p.add_argument("--snapshot", action="append", help="iterations between snapshots")
    p.add_argument("--random-seed", action="append",
                   help="solver random_seed (fillers, dropout) per stage; default unseeded")
    p.add_argument("--step2-lr", action="append", help="K=RATE: step-2 rate of macro-layer K's decoder (Table S-1)")
    p.add_argument("--loss-weight", action="append",
                   help="J=W: step-3/4 weight of the loss on macro-layer J's output (0 = image)")
    p.add_argument("--solver-mode", choices=["GPU", "CPU"], default="GPU")
    p.add_argument("--no-recon", action="store_true", help="skip the Section 4.2 inversion nets")
    p.add_argument("--recon-points", choices=["auto", "macro", "layer"], default="auto",
                   help="inversion nets after every macro-layer or every conv/fc (auto: layer for strided conv1)")
    p.add_argument("--draw", action="store_true", help="render each net with Caffe's draw_net.py (needs graphviz)")
    p.set_defaults(func=_cmd)


def _cmd(args):
    result = generate(args.net, args.variant, args.out, options_from_args(args))
    print(result["analysis"])
    for v, p in result["plans"].items():
        print(f"{v}: {p}")
    print(f"wrote {len(result['files'])} files under {result['out_dir']} (see README.md)")
    return 0
