"""The stage plan (``plan.json``, docs/PLAN_FORMAT.md): the one definition
of its format, the resolution of weight references, and the enforcement of
``init[].layers``: a stage is initialised with exactly the layers its plan
names, taken from the files it names (net surgery on the caffemodels into a
per-stage init caffemodel; Caffe's ``-weights`` alone would copy every layer
of every file by name)."""
import json
import os
import sys

from .. import atomic
from ..caffe_io import protos
from ..errors import ReconDecError
from ..values import INT_MAX

FORMAT = "recon-dec-plan/2"
FORMAT_V1 = "recon-dec-plan/1"   # stages keyed by an integer "step"; read, never written
PRETRAINED = "@pretrained"
STAGE_REF = "@stage:"
STAGE_KEYS = ("id", "solver", "snapshot_prefix", "output")


def stage_ref(stage_id):
    return f"{STAGE_REF}{stage_id}"


def dumps(plan):
    return json.dumps(plan, indent=2) + "\n"


def load(plan_path):
    """A plan.json, checked, with ``_path`` and ``_dir`` added."""
    plan_path = os.path.abspath(os.fspath(plan_path))
    if os.path.isdir(plan_path):
        raise ReconDecError(f"{plan_path}: a directory, not a plan.json")
    try:
        plan = json.loads(protos.read_text_file(plan_path, "plan"))
    except ValueError as e:
        raise ReconDecError(f"{plan_path}: not valid JSON ({e})") from None
    if not isinstance(plan, dict) or plan.get("format") not in (FORMAT, FORMAT_V1):
        got = plan.get("format") if isinstance(plan, dict) else None
        raise ReconDecError(f"{plan_path}: format is {got!r}, expected '{FORMAT}'")
    stages = plan.get("stages")
    if not stages or not isinstance(stages, list):
        raise ReconDecError(f"{plan_path}: the plan has no stages")
    for s in stages:
        if not isinstance(s, dict):
            raise ReconDecError(f"{plan_path}: a stage is not an object")
        if plan["format"] == FORMAT_V1 and "step" in s:
            s.setdefault("id", str(s["step"]))
            s.setdefault("log", f"logs/step{s['step']}.log")
            if isinstance(s.get("requires", []), list):
                s["requires"] = [str(r) for r in s.get("requires", [])]
        for k in STAGE_KEYS:
            if k not in s:
                raise ReconDecError(f"{plan_path}: a stage lacks '{k}'")
        _check_stage(plan_path, s)
        s["id"] = str(s["id"])
    ids = [s["id"] for s in stages]
    if len(set(ids)) != len(ids):
        raise ReconDecError(f"{plan_path}: two stages share an id ({', '.join(ids)})")
    if plan.get("pretrained") is not None and not _path_text(plan["pretrained"]):
        raise ReconDecError(f"{plan_path}: 'pretrained' is not a path")
    known = set(ids)
    for s in stages:
        for r in s.get("requires", []):
            if str(r) not in known:
                raise ReconDecError(f"{plan_path}: stage {s['id']} requires stage {r}, which the plan lacks")
        for init in s.get("init", []):
            w = init["weights"]
            if w.startswith(STAGE_REF) and w[len(STAGE_REF):] not in known:
                raise ReconDecError(f"{plan_path}: stage {s['id']} is initialised from {w}, which the plan lacks")
    plan["_path"] = plan_path
    plan["_dir"] = os.path.dirname(plan_path)
    return plan


def _path_text(x):
    return isinstance(x, str) and x.strip() and "\0" not in x


def _check_stage(plan_path, s):
    """Types of one stage's keys (a hand-edited plan gets a one-line error,
    not a traceback further on)."""
    sid = s.get("id")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or not str(sid).strip():
        raise ReconDecError(f"{plan_path}: a stage id must be a string or an integer, got {sid!r}")
    at = f"{plan_path}: stage {sid}"
    for k in ("solver", "snapshot_prefix", "output", "train_net", "log"):
        if k in s and not (_path_text(s[k]) or (k in ("train_net", "log") and s[k] is None)):
            raise ReconDecError(f"{at}: '{k}' must be a path (a non-empty string), got {s[k]!r}")
    for k in ("max_iter", "batch", "iter_size"):
        if k in s and (isinstance(s[k], bool) or not isinstance(s[k], int) or s[k] < 1 or s[k] > INT_MAX):
            raise ReconDecError(f"{at}: '{k}' must be an integer >= 1, got {s[k]!r}")
    if not isinstance(s.get("requires", []), list) or \
            any(isinstance(r, bool) or not isinstance(r, (str, int)) for r in s.get("requires", [])):
        raise ReconDecError(f"{at}: 'requires' must be a list of stage ids")
    init = s.get("init", [])
    if not isinstance(init, list):
        raise ReconDecError(f"{at}: 'init' must be a list")
    for i in init:
        if not isinstance(i, dict) or not _path_text(i.get("weights")):
            raise ReconDecError(f"{at}: each 'init' entry needs 'weights' (a path, @pretrained or @stage:ID)")
        layers = i.get("layers")
        if layers is not None and (not isinstance(layers, list) or
                                   not all(isinstance(n, str) and n for n in layers)):
            raise ReconDecError(f"{at}: 'layers' of an init entry must be a list of layer names")


def stage(plan, stage_id):
    for s in plan["stages"]:
        if s["id"] == str(stage_id):
            return s
    have = ", ".join(s["id"] for s in plan["stages"])
    raise ReconDecError(f"{plan['_path']}: no stage {stage_id} (stages: {have})")


def path(plan, p):
    """A path of the plan, absolute (plan paths are relative to its directory)."""
    return p if os.path.isabs(p) else os.path.join(plan["_dir"], p)


def stage_output(plan, stage_id):
    return path(plan, stage(plan, stage_id)["output"])


def stage_complete(plan, stage_id):
    return os.path.isfile(stage_output(plan, stage_id))


def default_log(snapshot_prefix):
    return os.path.join("logs", os.path.basename(snapshot_prefix) + ".log")


def log_path(plan, st):
    """Where the driver logs a stage: its ``log``, or ``logs/<snapshot name>.log``."""
    return path(plan, st.get("log") or default_log(st["snapshot_prefix"]))


def _missing_stage(plan, st, r, why):
    return ReconDecError(f"{plan['_path']}: stage {st['id']} {why} stage {r}'s output "
                         f"{stage(plan, r)['output']}, which does not exist; run "
                         f"`recon-dec train {plan['_path']} --stage {r}` first")


def resolve_weights(plan, st):
    """[(absolute caffemodel path, layer names or None)] of a stage's
    ``init`` entries, in order; one-line errors for a missing
    prerequisite or file."""
    for r in st.get("requires", []):
        if not stage_complete(plan, r):
            raise _missing_stage(plan, st, r, "needs")
    out = []
    for init in st.get("init", []):
        w = init["weights"]
        if w == PRETRAINED:
            if not plan.get("pretrained"):
                raise ReconDecError(f"{plan['_path']}: stage {st['id']} uses {PRETRAINED} but the plan has no 'pretrained'")
            p = path(plan, plan["pretrained"])
            if not os.path.isfile(p):
                raise ReconDecError(f"{p}: pretrained weights (stage {st['id']}) do not exist")
        elif w.startswith(STAGE_REF):
            r = w[len(STAGE_REF):]
            p = stage_output(plan, r)
            if not os.path.isfile(p):
                raise _missing_stage(plan, st, r, "is initialised from")
        else:
            p = path(plan, w)
            if not os.path.isfile(p):
                raise ReconDecError(f"{p}: initial weights for stage {st['id']} do not exist")
        out.append((p, init.get("layers")))
    return out


def caffe_weights_arg(plan, st):
    """What ``caffe train -weights`` gets in the stage's shell command (for
    README files): the files, in order."""
    out = []
    for init in st.get("init", []):
        w = init["weights"]
        if w == PRETRAINED:
            w = plan["pretrained"]
        elif w.startswith(STAGE_REF):
            w = stage(plan, w[len(STAGE_REF):])["output"]
        if w not in out:
            out.append(w)
    return out


def init_weights(plan, st, net=None, net_path=None):
    """The one caffemodel that initialises a stage, or None, and {layer:
    file it comes from}: each init entry's listed layers (all of its layers
    when it lists none) copied from its file, later entries winning. When a
    single file holds exactly those layers it is used as it is; otherwise
    they are copied into ``init/<snapshot name>.caffemodel`` beside the plan
    (the driver removes it once Caffe has read it). ``net`` (the stage's
    NetParameter) checks that the layers exist."""
    entries = resolve_weights(plan, st)
    if not entries:
        return None, {}
    mine = {l.name for l in net.layer} if net is not None else None
    chosen = {}
    for p, names in entries:
        layers = protos.caffemodel_layers(protos.read_caffemodel(p))
        if names is None:
            if mine is not None and layers and not set(layers) & mine:
                raise ReconDecError(f"{p}: none of its layers ({', '.join(sorted(layers)[:4])}...) "
                                    f"is a layer of {net_path}")
            names = list(layers)
        elif not names:
            raise ReconDecError(f"{plan['_path']}: stage {st['id']}: the init entry of {p} lists no layers")
        for n in names:
            if mine is not None and n not in mine:
                raise ReconDecError(f"{plan['_path']}: stage {st['id']} initialises layer '{n}' "
                                    f"from {p}, but {net_path} has no such layer")
        _warn_missing(p, names, set(layers), st)
        for n in names:
            if n in layers:
                chosen[n] = (layers[n], p)
    origin = {n: p for n, (_, p) in chosen.items()}
    files = set(origin.values())
    if len(files) == 1:
        only = files.pop()
        if set(protos.caffemodel_layers(protos.read_caffemodel(only))) == set(origin):
            return only, origin
    merged = protos.pb2().NetParameter()
    merged.name = f"init of stage {st['id']}"
    for n, (src, _) in chosen.items():
        l = merged.layer.add()
        l.name = n
        if isinstance(src.type, str):
            l.type = src.type
        l.blobs.extend(src.blobs)
    out = path(plan, os.path.join("init", os.path.basename(st["snapshot_prefix"]) + ".caffemodel"))
    atomic.write_bytes(out, merged.SerializeToString())
    return out, origin


def _warn_missing(p, names, held, st):
    """Layers a plan lists but a weights file lacks keep their fillers, as
    Caffe does; say so once (e.g. BatchNorm layers renamed by the analysis)."""
    if names is None:
        return
    missing = [n for n in names if n not in held]
    if missing and len(missing) < len(names):
        print(f"recon-dec: warning: stage {st['id']}: {p} has no weights for "
              f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: left at their fillers",
              file=sys.stderr)
    elif missing:
        raise ReconDecError(f"{p}: none of the layers stage {st['id']} initialises from it "
                            f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) is in it")
