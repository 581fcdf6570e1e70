"""``recon-dec generate``: from a classifier's deploy prototxt, the nets of a
method's variants: per variant directory, each stage's train net and solver,
the last stage's train_val, a deploy net and ``plan.json``; and a README.

Everything is built and validated in memory first; files are written only
when all of it succeeded (atomically, one by one). Nothing here knows a
particular method: ``recon_dec.methods`` supplies the nets."""
import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass, field

from .. import atomic, methods
from ..caffe_io import protos
from ..errors import ReconDecError
from ..graph import data_layers as D
from ..graph.encoder import input_shape_of, load_encoder
from ..graph.solver import SETTINGS, solver_message, stage_output
from . import plan as plan_mod


@dataclass
class Options:
    """Everything but the net, the method's own options and the variants.
    ``stage`` holds per-stage solver overrides {setting: {stage key or
    "all": value}}, stage keys as the method's ``stage_defaults``."""
    weights: str = None              # pretrained caffemodel (checked to exist)
    data: D.DataSpec = field(default_factory=D.DataSpec)
    input_size: int = None           # H = W of the input (overrides the deploy file)
    deploy_batch: int = None         # batch of the generated deploy nets
    test_iter: int = 100
    test_interval: int = 5000
    solver_mode: str = "GPU"
    stage: dict = field(default_factory=dict)
    draw: bool = False


# --------------------------------------------------------------------------
def _init_entry(i):
    return {"weights": i.weights, "layers": list(i.layers)}


def variant_files(ctx, variant, method):
    """{relative path: text} of one variant directory, and its plan dict."""
    opts = ctx.options
    files, stages = {}, []
    for st in variant.stages:
        net_rel = os.path.join(st.dir, "train_val.prototxt")
        if net_rel in files:
            raise ReconDecError(f"method {method.name}: stages of {variant.name} share the directory "
                                f"'{st.dir}' (give each stage its own Stage.dir)")
        prefix = st.snapshot_prefix or f"snapshots/{st.id}"
        files[net_rel] = str(st.net)
        test_iter = opts.test_iter if ctx.has_test else None
        solver = solver_message(net_rel, st.settings, prefix, test_iter, opts.test_interval, opts.solver_mode)
        files[os.path.join(st.dir, "solver.prototxt")] = str(solver)
        stages.append(dict({
            "id": st.id, "name": st.name, "description": st.description,
            "solver": os.path.join(st.dir, "solver.prototxt"), "train_net": net_rel,
            "init": [_init_entry(i) for i in st.init], "requires": list(st.requires),
            "snapshot_prefix": prefix, "log": plan_mod.default_log(prefix),
            "max_iter": int(st.settings["max_iter"]),
            "output": stage_output(prefix, st.settings["max_iter"]),
            "batch": int(st.settings["batch"]), "iter_size": int(st.settings["iter_size"]),
        }, **st.extra))
    files.setdefault("train_val.prototxt", str(variant.stages[-1].net))
    files["deploy.prototxt"] = str(variant.deploy)
    plan = {"format": plan_mod.FORMAT, "method": method.name, "variant": variant.name,
            "source_net": os.path.abspath(ctx.enc.path), "pretrained": ctx.pretrained, "stages": stages}
    files["plan.json"] = plan_mod.dumps(plan)
    return files, plan


def build_all(net_path, method, variants, opts, method_options):
    """Everything to write, as {relative path: text}; the analysis; the plans."""
    if opts.weights is not None and not os.path.isfile(opts.weights):
        raise ReconDecError(f"{opts.weights}: --weights file does not exist")
    shape = None
    if opts.input_size or opts.deploy_batch:
        n, c, h, w = input_shape_of(protos.load_net(net_path), net_path)
        if opts.input_size:
            h = w = opts.input_size
        shape = (opts.deploy_batch or n, c, h, w)
    enc = load_encoder(net_path, shape, method.encoder_types, method.needs_convolution)
    defaults = {k: v for k, v in method.data_defaults.items() if getattr(opts.data, k) is None}
    if defaults:
        opts = dataclasses.replace(opts, data=dataclasses.replace(opts.data, **defaults))
    ctx = methods.Context(enc, opts, method_options, os.path.abspath(opts.weights) if opts.weights else None,
                          method)
    built = method.build(ctx, variants)
    files, plans = {}, {}
    for v in built:
        vf, plan = variant_files(ctx, v, method)
        plans[v.name] = plan
        files.update({f"{v.name}/{k}": t for k, t in vf.items()})
    files["README.md"] = readme(ctx, method, built, plans, files)
    return enc, files, plans


def generate(net_path, variants, out_dir, options=None, method=methods.DEFAULT, method_options=None):
    """Builds every net of ``method`` for ``variants`` (its variant names,
    or ["all"]) and writes them under ``out_dir``. Returns a dict: encoder
    (the analysis), analysis (text), files (absolute paths written), out_dir,
    plans ({variant directory: absolute plan.json path})."""
    opts = options or Options()
    m = methods.get(method) if isinstance(method, str) else method
    mo = method_options if method_options is not None else m.options()
    enc, files, plans = build_all(os.fspath(net_path), m, expand_variants(m, variants), opts, mo)
    out_dir = os.path.abspath(out_dir)
    written = []
    for rel, text in files.items():  # only now, after everything validated
        path = os.path.join(out_dir, rel)
        atomic.write_text(path, text)
        written.append(path)
    result = {"encoder": enc, "analysis": enc.describe(), "files": written, "out_dir": out_dir,
              "plans": {v: os.path.join(out_dir, v, "plan.json") for v in plans}}
    if opts.draw:
        result["drawn"] = draw([p for p in written if p.endswith(".prototxt") and "solver" not in p])
    return result


def expand_variants(method, variants):
    if isinstance(variants, str):
        variants = [variants]
    out = []
    for v in variants:
        for x in (method.variants if v == "all" else [v]):
            if x not in method.variants:
                raise ReconDecError(f"--variant: unknown variant {x!r} of method {method.name} "
                                    f"(one of {', '.join(method.variants)}, all)")
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


def draw(nets):
    """Renders each net to a PNG beside it with pycaffe's caffe.draw (Caffe's
    draw_net.py), written atomically. Needs graphviz's ``dot``."""
    if shutil.which("dot") is None:
        print("recon-dec: --draw skipped: graphviz `dot` is not installed", file=sys.stderr)
        return []
    from caffe import draw as caffe_draw
    drawn = []
    for n in nets:
        param = drawable(protos.read_net(n))
        png = n[: -len(".prototxt")] + ".png"
        atomic.write_bytes(png, caffe_draw.draw_net(param, "LR", ext="png"))
        drawn.append(png)
    return drawn


def _caffe_cmd(plan, stage):
    ws = plan_mod.caffe_weights_arg(plan, stage)
    return f"caffe train -solver {stage['solver']}" + (f" -weights {','.join(ws)}" if ws else "")


def readme(ctx, method, built, plans, files):
    lines = [f"# Generated by `recon-dec generate --method {method.name}`", "", method.help + ".", "",
             "## Encoder analysis", "", "```", ctx.enc.describe(), "```", "",
             "## Training stages", "",
             "Run each stage from its variant's directory (paths in the solvers are relative to it), "
             "or let `recon-dec train <variant>/plan.json --all` do it (it resumes, checks prerequisites "
             "and initialises each stage with exactly the layers its plan lists; the `-weights` below "
             "copy every layer of the files by name).", ""]
    for v in built:
        if len(v.stages) == 1 and v.description:
            lines.append(f"- `{v.name}` ({v.description}): `cd {v.name} && {_caffe_cmd(plans[v.name], plans[v.name]['stages'][0])}`")
            continue
        lines += [f"### {v.name}", ""]
        for s in plans[v.name]["stages"]:
            lines.append(f"- stage {s['id']} ({s['description']}): "
                         f"`cd {v.name} && {_caffe_cmd(plans[v.name], s)}` -> `{s['output']}`")
        lines.append("")
    lines += [""] + method.readme(ctx, built)
    lines += ["## Settings and where they come from", "", method.provenance, "",
              "Override with `--base-lr`, `--max-iter`, `--batch`, `--iter-size`, `--weight-decay`, "
              "`--lr-policy`, `--stepsize`, `--gamma`, `--snapshot`, `--random-seed` (each `VALUE` or "
              f"`STAGE=VALUE`, STAGE one of {', '.join(method.stage_defaults)}).", "",
              "## Files", ""]
    lines += [f"- `{rel}`" for rel in sorted(list(files) + ["README.md"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# command line
STAGE_FLAGS = (("base_lr", "--base-lr", float), ("max_iter", "--max-iter", int), ("batch", "--batch", int),
               ("iter_size", "--iter-size", int), ("weight_decay", "--weight-decay", float),
               ("lr_policy", "--lr-policy", str), ("stepsize", "--stepsize", int),
               ("gamma", "--gamma", float), ("snapshot", "--snapshot", int),
               ("random_seed", "--random-seed", int))
assert {k for k, _, _ in STAGE_FLAGS} | {"momentum"} == set(SETTINGS)


def per_stage(values, cast, flag, keys):
    """["1e-4", "2=1e-8", "recon=5"] -> {"all": 1e-4, "2": 1e-8, "recon": 5}."""
    out = {}
    for v in values or []:
        if "=" in v:
            key, x = (s.strip() for s in v.split("=", 1))
            if key not in keys and key != "all":
                raise ReconDecError(f"{flag}: stage {key!r} is not one of {', '.join(keys)} or all")
        else:
            key, x = "all", v
        try:
            out[key] = cast(x)
        except ValueError:
            raise ReconDecError(f"{flag}: {x!r} is not a valid value") from None
    return out


def _scale_range(text):
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ReconDecError(f"--scale-range: {text!r} is not MIN,MAX") from None
    if not 0 < lo <= hi:
        raise ReconDecError(f"--scale-range: need 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def options_from_args(a, method):
    stage = {}
    for key, flag, cast in STAGE_FLAGS:
        per = per_stage(getattr(a, key), cast, flag, list(method.stage_defaults))
        if per:
            stage[key] = per
    mean = None
    if a.mean is not None:
        try:
            mean = tuple(float(x) for x in a.mean.split(",") if x.strip())
        except ValueError:
            raise ReconDecError(f"--mean: {a.mean!r} is not a comma-separated list of numbers") from None
    data = D.DataSpec(kind=a.data, train_source=a.train_source, val_source=a.val_source,
                      root_folder=a.root_folder, resize=a.resize, scale_range=_scale_range(a.scale_range),
                      test_size=a.test_size, square_size=a.square_size, threads=a.threads, mean=mean,
                      scale=a.scale, crop=a.crop, mirror=False if a.no_mirror else None,
                      test_batch=a.test_batch)
    return Options(weights=a.weights, data=data, input_size=a.input_size, deploy_batch=a.deploy_batch,
                   test_iter=a.test_iter, test_interval=a.test_interval, solver_mode=a.solver_mode,
                   stage=stage, draw=a.draw)


def register(subparsers):
    p = subparsers.add_parser(
        "generate", help="write a method's nets, solvers and stage plans for a classifier",
        description="From a classifier's deploy prototxt (VGG16, AlexNet, ... in the new or the legacy "
                    "V1 format) write, for each variant of the method, every stage's train net and "
                    "solver, train_val/deploy nets and plan.json, and README.md. Nothing is written if "
                    "any check fails. Per-stage options take VALUE (every stage) or STAGE=VALUE, and may "
                    "be repeated.")
    all_methods = methods.all_methods()
    p.add_argument("--method", default=methods.DEFAULT, choices=sorted(all_methods),
                   help=f"the method (default {methods.DEFAULT})")
    p.add_argument("--net", required=True, help="deploy prototxt of the classifier")
    p.add_argument("--variant", action="append", required=True,
                   help="a variant of the method, or all (repeatable); "
                        + "; ".join(f"{n}: {', '.join(m.variants)}" for n, m in sorted(all_methods.items())))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", help="pretrained caffemodel of the classifier (must exist)")
    p.add_argument("--data", choices=list(D.KINDS), default="lmdb",
                   help="data layer: Caffe's LMDB Data layer, ImageData list, or our "
                        "ScaleJitterData layer on an encoded-image LMDB (the paper's augmentation; "
                        "default lmdb)")
    p.add_argument("--scale-range", default="256,512",
                   help="scale-jitter: MIN,MAX of the random shorter edge in TRAIN (default 256,512)")
    p.add_argument("--test-size", type=int, default=256, help="scale-jitter: shorter edge in TEST (default 256)")
    p.add_argument("--square-size", type=int,
                   help="scale-jitter: AlexNet mode, centre square resized to NxN (e.g. 256)")
    p.add_argument("--threads", type=int, default=4, help="scale-jitter: decoding threads per batch")
    p.add_argument("--train-source", help="training LMDB directory or image list")
    p.add_argument("--val-source", help="validation LMDB / list; adds a TEST phase with top-1/top-5 accuracy")
    p.add_argument("--root-folder", default="", help="imagelist: folder the list's paths are relative to")
    p.add_argument("--resize", type=int, default=0, help="imagelist: resize images to NxN before cropping (0: keep)")
    p.add_argument("--mean", help="mean values B,G,R (or one value for grayscale); default VGG's for 3 channels")
    p.add_argument("--scale", type=float,
                   help="transform_param scale applied after mean subtraction (default 1, or the method's)")
    p.add_argument("--crop", type=int, help="crop size (default: the input size; 0: no cropping)")
    p.add_argument("--no-mirror", action="store_true", help="no random mirroring in TRAIN")
    p.add_argument("--input-size", type=int, help="override the input height = width of the deploy file")
    p.add_argument("--deploy-batch", type=int, help="batch of the generated deploy nets (default the source's)")
    p.add_argument("--batch", action="append", help="training batch per stage (defaults: see README)")
    p.add_argument("--iter-size", action="append", help="gradient accumulation per stage")
    p.add_argument("--test-batch", type=int, default=10, help="TEST batch (default 10)")
    p.add_argument("--test-iter", type=int, default=100, help="TEST iterations per test (default 100)")
    p.add_argument("--test-interval", type=int, default=5000, help="iterations between tests (default 5000)")
    p.add_argument("--base-lr", action="append", help="solver base_lr per stage (defaults: see README)")
    p.add_argument("--max-iter", action="append", help="iterations per stage, e.g. 2=20000")
    p.add_argument("--weight-decay", action="append", help="weight decay per stage")
    p.add_argument("--lr-policy", action="append", help="fixed|step|exp|inv per stage")
    p.add_argument("--stepsize", action="append", help="step policy: iterations per LR drop")
    p.add_argument("--gamma", action="append", help="LR drop factor")
    p.add_argument("--snapshot", action="append", help="iterations between snapshots")
    p.add_argument("--random-seed", action="append",
                   help="solver random_seed (fillers, dropout) per stage; default unseeded")
    p.add_argument("--solver-mode", choices=["GPU", "CPU"], default="GPU")
    p.add_argument("--draw", action="store_true", help="render each net with Caffe's draw_net.py (needs graphviz)")
    owned = {}
    for name, m in sorted(all_methods.items()):
        g = p.add_argument_group(f"options of --method {name}")
        before = len(g._group_actions)
        m.add_arguments(g)
        owned[name] = [(a.dest, a.option_strings[0]) for a in g._group_actions[before:]]
    p.set_defaults(func=_cmd, method_flags=owned)


def _cmd(args):
    method = methods.get(args.method)
    for other, flags in args.method_flags.items():
        for dest, flag in flags:
            if other != method.name and getattr(args, dest, None) is not None:
                raise ReconDecError(f"{flag} is an option of --method {other}, not of {method.name}")
    result = generate(args.net, args.variant, args.out, options_from_args(args, method), method,
                      method.options(args))
    print(result["analysis"])
    requested = expand_variants(method, args.variant)
    for v, p in result["plans"].items():
        if v in requested:
            print(f"{v}: {p}")
    print(f"wrote {len(result['files'])} files under {result['out_dir']} (see README.md)")
    return 0
