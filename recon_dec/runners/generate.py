"""``recon-dec generate``: from a classifier's deploy prototxt, the nets of a
method's variants: per variant directory, each stage's train net and solver,
the last stage's train_val, a deploy net and ``plan.json``; and a README.

Everything is built and validated in memory first, then written as a tree
beside OUT, every net built by Caffe in a child process, and only then
renamed into place (``atomic.atomic_tree``): OUT is whole or absent. Nothing here knows a
particular method: ``recon_dec.methods`` supplies the nets."""
import dataclasses
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

from .. import atomic, methods, values
from ..caffe_io import netcheck, protos
from ..errors import ReconDecError
from ..graph import data_layers as D
from ..graph.builder import RESERVED_PREFIX
from ..graph.encoder import input_shape_of
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
        check_stage_settings(st, method)
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
            "source_net": os.path.abspath(ctx.enc.path), "pretrained": ctx.pretrained,
            "input": [int(d) for d in ctx.enc.input_shape[1:]], "stages": stages}
    files["plan.json"] = plan_mod.dumps(plan)
    return files, plan


def build_all(net_path, method, variants, opts, method_options):
    """Everything to write, as {relative path: text}; the analysis; the plans."""
    if opts.weights is not None:
        protos.check_caffemodel_file(values.check_in_file(opts.weights, "--weights", "caffemodel"))
    shape = None
    if opts.input_size or opts.deploy_batch:
        n, c, h, w = input_shape_of(protos.load_net(net_path), net_path)
        if opts.input_size:
            h = w = opts.input_size
        shape = (opts.deploy_batch or n, c, h, w)
    enc = method.analyse(net_path, shape)
    defaults = {k: v for k, v in method.data_defaults.items() if getattr(opts.data, k) is None}
    if defaults:
        opts = dataclasses.replace(opts, data=dataclasses.replace(opts.data, **defaults))
    check_data(opts.data, enc.input_shape)
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


def generate(net_path, variants, out_dir, options=None, method=methods.DEFAULT, method_options=None,
             force=False, check=True):
    """Builds every net of ``method`` for ``variants`` (its variant names,
    or ["all"]) and writes them under ``out_dir``, as a whole or not at all:
    the tree is written beside ``out_dir``, every net is built by Caffe
    (``check``; in a child process), and only then is it renamed into place.
    An existing non-empty ``out_dir`` is refused unless ``force`` (replaced
    as a whole) or it already holds exactly these files (nothing is written:
    a re-run of the same command). Returns a dict: encoder (the analysis),
    analysis (text), files (absolute paths), out_dir, plans ({variant
    directory: absolute plan.json path}), unchanged (True when nothing was
    written), drawn (with --draw)."""
    opts = options or Options()
    m = methods.get(method) if isinstance(method, str) else method
    mo = method_options if method_options is not None else m.options()
    out_dir = values.check_out_dir(out_dir)
    enc, files, plans = build_all(os.fspath(net_path), m, expand_variants(m, variants), opts, mo)
    nets = [rel for rel in files if _is_net(rel)]
    result = {"encoder": enc, "analysis": enc.describe(), "out_dir": out_dir, "unchanged": False,
              "files": [os.path.join(out_dir, rel) for rel in files],
              "plans": {v: os.path.join(out_dir, v, "plan.json") for v in plans}}
    if not force and atomic.tree_state(out_dir) == "full":
        if not _holds(out_dir, files, nets if opts.draw else ()):
            raise ReconDecError(f"{out_dir}: --out exists and holds other files; choose a new directory, "
                                "or --force to replace it as a whole")
        result["unchanged"] = True
        if opts.draw:
            result["drawn"] = [os.path.join(out_dir, _png(rel)) for rel in nets]
        return result
    try:
        with atomic.atomic_tree(out_dir, replace=force) as tmp:
            atomic.write_files(tmp, files)
            if check:
                check_nets(enc, files, nets, os.fspath(net_path))
            if opts.draw:
                drawn = draw([os.path.join(tmp, rel) for rel in nets])
                result["drawn"] = [os.path.join(out_dir, os.path.relpath(p, tmp)) for p in drawn]
    except atomic.TreeExists:
        raise ReconDecError(f"{out_dir}: --out appeared meanwhile and is not empty; nothing written") from None
    return result


def _is_net(rel):
    return rel.endswith(".prototxt") and not os.path.basename(rel).startswith("solver")


def _png(rel):
    return rel[: -len(".prototxt")] + ".png"


def _holds(out_dir, files, drawn):
    """True when ``out_dir`` already holds every one of ``files`` with the
    same content (and the drawings of ``drawn``)."""
    for rel, text in files.items():
        try:
            with open(os.path.join(out_dir, rel), encoding="utf-8") as f:
                if f.read() != text:
                    return False
        except (OSError, ValueError):
            return False
    return all(os.path.isfile(os.path.join(out_dir, _png(rel))) for rel in drawn)


def _source_of(enc, net_path):
    """Generated layer name -> (the deploy file, the name there) for the
    layers that come from (or mirror) one of its layers."""
    names = {e.name: e.source_name for e in enc.layers}

    def find(layer):
        base = layer[len(RESERVED_PREFIX):] if layer.startswith(RESERVED_PREFIX) else layer
        base = re.sub(r"-(pre|body|post)$", "", re.split(r"[/\[@]", base)[0])
        for cand in (layer, base):
            if cand in names:
                return net_path, names[cand]
        return None
    return find


def check_nets(enc, files, nets, net_path):
    """Every generated net built by Caffe (one child process, data layers
    as Input layers at batch 1); ReconDecError naming the deploy's layer, or
    the generated file's, that Caffe rejects."""
    seen, todo = set(), []
    find = _source_of(enc, net_path)
    for rel in nets:
        if files[rel] not in seen:  # train_val.prototxt repeats the last stage's net
            seen.add(files[rel])
            todo.append(netcheck.Net(rel, files[rel], find))
    netcheck.check_nets(todo, enc.input_shape)


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
def _text(x, flag):
    if not x.strip():
        raise ReconDecError(f"{flag}: empty value")
    return x.strip()


def _pos_float(x, flag):
    return values.check_float(x, flag, 0, values.FLT_MAX, low_open=True)


def _nonneg_float(x, flag):
    return values.check_float(x, flag, 0, values.FLT_MAX)


def _pos_int(x, flag):
    return values.check_int(x, flag, 1)


def _nonneg_int(x, flag):
    return values.check_int(x, flag, 0)


def _seed(x, flag):
    return values.check_int(x, flag, -1, 2 ** 63 - 1)


STAGE_FLAGS = (("base_lr", "--base-lr", _pos_float), ("max_iter", "--max-iter", _pos_int),
               ("batch", "--batch", _pos_int), ("iter_size", "--iter-size", _pos_int),
               ("weight_decay", "--weight-decay", _nonneg_float),
               ("lr_policy", "--lr-policy", _text), ("stepsize", "--stepsize", _nonneg_int),
               ("gamma", "--gamma", _pos_float), ("snapshot", "--snapshot", _nonneg_int),
               ("random_seed", "--random-seed", _seed))
assert {k for k, _, _ in STAGE_FLAGS} | {"momentum"} == set(SETTINGS)


def per_stage(items, cast, flag, keys):
    """["1e-4", "2=1e-8", "recon=5"] -> {"all": 1e-4, "2": 1e-8, "recon": 5}.
    ``cast(text, flag)`` converts and checks one value."""
    out = {}
    for v in items or []:
        if "=" in v:
            key, x = (s.strip() for s in v.split("=", 1))
            if key not in keys and key != "all":
                raise ReconDecError(f"{flag}: stage {key!r} is not one of {', '.join(keys)} or all")
        else:
            key, x = "all", v
        out[key] = cast(x, flag if "=" not in v else f"{flag} {key}={x}")
    return out


def _scale_range(text):
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ReconDecError(f"--scale-range: {text!r} is not MIN,MAX") from None
    if not 0 < lo <= hi <= values.MAX_IMAGE_SIDE:
        raise ReconDecError(f"--scale-range: need 0 < MIN <= MAX <= {values.MAX_IMAGE_SIDE}, got {text!r}")
    return lo, hi


def check_data(spec, input_shape):
    """The data options against each other and the net's input (N, C, H, W):
    values Caffe would abort on, or that would train another net than the
    one analysed."""
    _, _, h, w = input_shape
    crop = h if spec.crop is None else spec.crop
    if crop and (crop != h or crop != w):
        raise ReconDecError(f"--crop: {crop} differs from the net's input {h}x{w}; the nets are built for "
                            f"{h}x{w} (change the input with --input-size, or --crop 0 for images of that size)")
    if spec.kind == "scale-jitter":
        if not crop:
            raise ReconDecError("--crop: 0 with --data scale-jitter, which always crops")
        lo, _ = spec.scale_range
        if spec.square_size is not None and spec.square_size < crop:
            raise ReconDecError(f"--square-size: {spec.square_size} is smaller than the {crop}x{crop} crop")
        if spec.square_size is None and lo < crop:
            raise ReconDecError(f"--scale-range: the shorter edge {lo} is smaller than the {crop}x{crop} crop")
        if spec.square_size is None and spec.test_size < crop:
            raise ReconDecError(f"--test-size: {spec.test_size} is smaller than the {crop}x{crop} crop")
    if spec.kind == "imagelist" and spec.resize and crop and spec.resize < crop:
        raise ReconDecError(f"--resize: {spec.resize} is smaller than the {crop}x{crop} crop")


def check_stage_settings(st, method):
    """A stage's merged solver settings (defaults and overrides)."""
    s = st.settings
    if s.get("lr_policy") == "step" and int(s.get("stepsize") or 0) < 1:
        raise ReconDecError(f"--stepsize: stage {st.id} uses lr_policy step and needs a stepsize >= 1 "
                            f"(method {method.name})")


def options_from_args(a, method):
    stage = {}
    for key, flag, cast in STAGE_FLAGS:
        per = per_stage(getattr(a, key), cast, flag, list(method.stage_defaults))
        if per:
            stage[key] = per
    mean = None
    if a.mean is not None:
        mean = values.numbers(a.mean, "--mean")
    data = D.DataSpec(kind=a.data, train_source=a.train_source, val_source=a.val_source,
                      labeled_source=a.labeled_source,
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
    p.add_argument("--out", required=True,
                   help="output directory; written as a whole or not at all (an existing non-empty one "
                        "is refused unless --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out as a whole (its old files are removed)")
    p.add_argument("--weights", help="pretrained caffemodel of the classifier (must exist)")
    p.add_argument("--data", choices=list(D.KINDS), default="lmdb",
                   help="data layer: Caffe's LMDB Data layer, ImageData list, or our "
                        "ScaleJitterData layer on an encoded-image LMDB (the paper's augmentation; "
                        "default lmdb)")
    p.add_argument("--scale-range", default="256,512",
                   help="scale-jitter: MIN,MAX of the random shorter edge in TRAIN (default 256,512)")
    p.add_argument("--test-size", type=values.arg_int(1, values.MAX_IMAGE_SIDE), default=256,
                   help="scale-jitter: shorter edge in TEST (default 256)")
    p.add_argument("--square-size", type=values.arg_int(1, values.MAX_IMAGE_SIDE),
                   help="scale-jitter: AlexNet mode, centre square resized to NxN (e.g. 256)")
    p.add_argument("--threads", type=values.arg_int(1, 256), default=4, help="scale-jitter: decoding threads per batch")
    p.add_argument("--train-source", help="training LMDB directory or image list")
    p.add_argument("--labeled-source",
                   help="LMDB of the labeled images, for methods that train on a labeled and an unlabeled "
                        "stream (--train-source then holds the unlabeled images)")
    p.add_argument("--val-source", help="validation LMDB / list; adds a TEST phase with top-1/top-5 accuracy")
    p.add_argument("--root-folder", default="", help="imagelist: folder the list's paths are relative to")
    p.add_argument("--resize", type=values.arg_int(0, values.MAX_IMAGE_SIDE), default=0, help="imagelist: resize images to NxN before cropping (0: keep)")
    p.add_argument("--mean", help="mean values B,G,R (or one value for grayscale); default VGG's for 3 channels")
    p.add_argument("--scale", type=values.arg_float(0, values.FLT_MAX, low_open=True),
                   help="transform_param scale applied after mean subtraction (default 1, or the method's)")
    p.add_argument("--crop", type=values.arg_int(0, values.MAX_IMAGE_SIDE), help="crop size (default: the input size; 0: no cropping)")
    p.add_argument("--no-mirror", action="store_true", help="no random mirroring in TRAIN")
    p.add_argument("--input-size", type=values.arg_int(1, values.MAX_IMAGE_SIDE), help="override the input height = width of the deploy file")
    p.add_argument("--deploy-batch", type=values.arg_int(1), help="batch of the generated deploy nets (default the source's)")
    p.add_argument("--batch", action="append", help="training batch per stage (defaults: see README)")
    p.add_argument("--iter-size", action="append", help="gradient accumulation per stage")
    p.add_argument("--test-batch", type=values.arg_int(1), default=10, help="TEST batch (default 10)")
    p.add_argument("--test-iter", type=values.arg_int(1), default=100, help="TEST iterations per test (default 100)")
    p.add_argument("--test-interval", type=values.arg_int(1), default=5000, help="iterations between tests (default 5000)")
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


def main(argv):
    """``recon-dec generate ARGV`` in-process, for experiments; errors are
    raised as ReconDecError."""
    import argparse
    p = argparse.ArgumentParser(prog="recon-dec")
    register(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["generate", *argv])
    return a.func(a)


def _cmd(args):
    method = methods.get(args.method)
    for other, flags in args.method_flags.items():
        for dest, flag in flags:
            if other != method.name and getattr(args, dest, None) is not None:
                raise ReconDecError(f"{flag} is an option of --method {other}, not of {method.name}")
    result = generate(args.net, args.variant, args.out, options_from_args(args, method), method,
                      method.options(args), force=args.force)
    print(result["analysis"])
    requested = expand_variants(method, args.variant)
    for v, p in result["plans"].items():
        if v in requested:
            print(f"{v}: {p}")
    if result["unchanged"]:
        print(f"{result['out_dir']} already holds these {len(result['files'])} files: nothing written")
    else:
        print(f"wrote {len(result['files'])} files under {result['out_dir']} (see README.md)")
    return 0
