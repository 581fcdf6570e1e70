"""Nets built by Caffe before anything is written: every net is
instantiated with ``caffe.Net`` in ONE child process (a CHECK failure aborts
that process, never ours), its data layers replaced by Input layers of the
net's input shape (no LMDB needed) at batch 1, fillers constant (cheap). A
failure is translated from Caffe's glog F-line into ``FILE: layer 'X':
reason``, the layer found from the last "Creating layer" line before it."""
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..errors import ReconDecError, where
from .protos import fatal_reason, parse_net, pb2, repeated as protos_repeated, to_text

MARK = "@@recon-dec-netcheck"
CREATING = re.compile(r"\] Creating layer (.+?)\s*$")
VALID_FILLERS = {"constant", "gaussian", "positive_unitball", "uniform", "xavier", "msra", "bilinear"}
TIMEOUT = 900

CHILD = r"""
import json, os, sys
import caffe
spec = json.load(sys.stdin)
if spec["gpu"] is None:
    caffe.set_mode_cpu()
else:
    caffe.set_device(spec["gpu"])
    caffe.set_mode_gpu()
for i, (path, phase) in enumerate(spec["nets"]):
    sys.stderr.write("%s %d\n" % (spec["mark"], i))
    sys.stderr.flush()
    net = caffe.Net(path, caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    del net
sys.stderr.write("%s done\n" % spec["mark"])
"""


@dataclass
class Net:
    """A net to build: ``label`` names it in errors (a path), ``text`` its
    prototxt. ``source_of`` maps its layer names to (file, layer) of the
    input the layer comes from, for the error message."""
    label: str
    text: str
    source_of: object = None


def is_data_layer(l):
    return l.type.endswith("Data")


def _phases(net):
    """TRAIN (when the net has layers of that phase or no phase rules),
    and TEST when some layer is TEST-only: both views must build."""
    rules = [r for l in net.layer for r in list(l.include) + list(l.exclude) if r.HasField("phase")]
    if not rules:
        return ["TEST"]  # a deploy net: phase-independent
    test = any(r.phase == pb2().TEST for l in net.layer for r in l.include if r.HasField("phase"))
    return ["TRAIN", "TEST"] if test else ["TRAIN"]


def _constant_fillers(msg):
    """Every FillerParameter of a known type becomes constant 0 (allocation
    and shape checks stay; gaussian fills of VGG's fc6 would cost seconds)."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value if protos_repeated(field) else [value]
        for v in items:
            if field.message_type.name == "FillerParameter":
                if v.type in VALID_FILLERS:
                    v.Clear()
                    v.type = "constant"
            else:
                _constant_fillers(v)


SMALL_INPUT = 1 << 22   # floats: below this a data layer keeps its own batch


def _batch(l, chw):
    """The batch a data layer is checked at: its own when the input is small
    (a Slice or Concat over the batch axis depends on it), else 1."""
    for field in ("data_param", "image_data_param", "scale_jitter_data_param"):
        if l.HasField(field):
            n = getattr(l, field).batch_size
            return n if 0 < n and n * chw <= SMALL_INPUT else 1
    return 1


def checkable(text, label, input_shape):
    """The net of ``text`` as Caffe gets it here: data layers -> Input of
    ``input_shape`` (N, C, H, W; the label tops (N,)), N the layer's batch
    for small inputs and 1 for large ones, constant fillers."""
    net = parse_net(text, label)
    _, c, h, w = input_shape
    for l in net.layer:
        if is_data_layer(l):
            n = _batch(l, c * h * w)
            tops = list(l.top)
            keep = pb2().LayerParameter()
            keep.name, keep.type = l.name, "Input"
            keep.top.extend(tops)
            keep.include.extend(l.include)
            keep.exclude.extend(l.exclude)
            for i, _ in enumerate(tops):
                keep.input_param.shape.add().dim.extend([n, c, h, w] if i == 0 else [n])
            l.CopyFrom(keep)
        elif l.type == "Input":
            for s in l.input_param.shape:
                if len(s.dim):
                    s.dim[0] = 1
        _constant_fillers(l)
    for s in net.input_shape:
        if len(s.dim):
            s.dim[0] = 1
    if len(net.input_dim) >= 4:
        for i in range(0, len(net.input_dim), 4):
            net.input_dim[i] = 1
    return net


def structure_key(msg):
    """Nets that differ only in learning-rate and decay multipliers or loss
    weights build alike in Caffe: one key for them, checked once."""
    m = type(msg)()
    m.CopyFrom(msg)
    for l in m.layer:
        for p in l.param:
            p.ClearField("lr_mult")
            p.ClearField("decay_mult")
        l.ClearField("loss_weight")
    return m.SerializeToString(deterministic=True)


def check_nets(nets, input_shape, gpu=None, python=None, workers=None):
    """Builds every ``Net`` in Caffe in child processes (``workers`` of
    them, each building its share in turn); ReconDecError naming the file and
    layer of the first that Caffe rejects."""
    if not nets:
        return
    with tempfile.TemporaryDirectory(prefix="recon-dec-netcheck-") as tmp:
        jobs, seen = [], set()
        for i, n in enumerate(nets):
            msg = checkable(n.text, n.label, input_shape)
            key = structure_key(msg)
            if key in seen:
                continue
            seen.add(key)
            path = os.path.join(tmp, f"{i}.prototxt")
            with open(path, "w") as f:
                f.write(to_text(msg))
            jobs += [((path, phase), (n, phase), len(n.text)) for phase in _phases(msg)]
        k = max(1, min(workers or (1 if (os.cpu_count() or 1) <= 2 else 2), len(jobs)))
        shares = [[] for _ in range(k)]
        load = [0] * k
        for job in sorted(jobs, key=lambda j: -j[2]):  # biggest first, to the least loaded
            i = load.index(min(load))
            shares[i].append(job)
            load[i] += job[2]
        env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1", GLOG_alsologtostderr="0")
        # transparent huge pages for Caffe's weight blobs: half the time for VGG16's
        env["GLIBC_TUNABLES"] = ":".join(x for x in (os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1")
                                         if x)
        procs = []
        for share in shares:
            spec = json.dumps({"nets": [j[0] for j in share], "gpu": gpu, "mark": MARK})
            p = subprocess.Popen([python or sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                 env=env, cwd=tmp)
            procs.append((p, spec, [j[1] for j in share]))
        failures = []
        try:
            for p, spec, labels in procs:
                try:
                    _, err = p.communicate(spec, timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    raise ReconDecError(f"{nets[0].label}: Caffe took more than {TIMEOUT} s to build the "
                                        "nets") from None
                if p.returncode != 0 or f"{MARK} done" not in err:
                    failures.append((err, p.returncode, labels))
        finally:
            for p, _, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if failures:
        order = {id(n): i for i, n in enumerate(nets)}
        first = min(failures, key=lambda f: order.get(id(_failed(f[0], f[2])), len(nets)))
        raise ReconDecError(explain(*first))


def _failed(stderr, labels):
    """The Net a child's output says it stopped at."""
    idx = None
    for line in stderr.splitlines():
        if line.startswith(MARK + " ") and not line.endswith(" done"):
            idx = int(line.split()[1])
    return labels[idx][0] if idx is not None else None


def explain(stderr, returncode, labels):
    """The one-line error of a failed check: which net (the last marker),
    which layer (the last "Creating layer" after it), why (the F-line)."""
    idx, layer, lines = None, None, stderr.splitlines()
    for line in lines:
        if line.startswith(MARK + " ") and not line.endswith(" done"):
            idx, layer = int(line.split()[1]), None
            continue
        m = CREATING.search(line)
        if m:
            layer = m.group(1)
    net, phase = labels[idx] if idx is not None else (None, None)
    reason = translate(fatal_reason(stderr, returncode))
    if net is None:
        if "No module named" in stderr:
            return f"Caffe's Python module could not be loaded to check the nets ({reason})"
        return f"Caffe could not start to check the nets ({reason})"
    view = f" ({phase} phase)" if phase == "TRAIN" or _has_train(labels, net) else ""
    if layer is None:
        return f"{net.label}: Caffe cannot build this net{view}: {reason}"
    src = net.source_of(layer) if net.source_of else None
    if src:
        f, name = src
        what = "" if name == layer else f" (as '{layer}' in the generated {net.label})"
        return where(f, name) + f"Caffe cannot build it{what}{view}: {reason}"
    return where(net.label, layer) + f"Caffe cannot build it{view}: {reason}"


def _has_train(labels, net):
    return any(n is net and p == "TRAIN" for n, p in labels)


# Caffe's CHECK texts in the user's terms; the first match wins.
TRANSLATIONS = [
    (r"Unknown bottom blob '([^']+)'", lambda m: f"it reads blob '{m.group(1)}', which no earlier layer writes"),
    (r"Unknown layer type: (\S+)", lambda m: f"layer type {m.group(1)} is not known to this Caffe build"),
    (r"blob size exceeds INT_MAX", lambda m: "a blob would hold more than INT_MAX values (too large)"),
    (r"K_ == new_K", lambda m: "its input size does not match its weights (the fc layer was built for another "
                               "input size)"),
    (r"Input size incompatible", lambda m: "its input size does not match its weights"),
    (r"shape\[i\] >= 0|shape\[\d\] >= 0", lambda m: "a blob would get a negative size (input too small "
                                                    "for the kernel?)"),
    (r"top_k must be less than or equal to the number of classes",
     lambda m: "top-k accuracy with k larger than the number of classes"),
    (r"Cannot use GPU in CPU-only Caffe", lambda m: "this Caffe was built without CUDA (CPU only)"),
    (r"(height|width) <= (datum|img)_(height|width) \((\d+) vs\. (\d+)\)",
     lambda m: f"an image of the data set is smaller than the {m.group(4)}-pixel crop ({m.group(1)} {m.group(5)})"),
    (r"Could not open or find file|Could not load", lambda m: "an image file of the list could not be read"),
    (r"produced by multiple sources", lambda m: "two layers write the same blob"),
    (r"Duplicate blobs produced", lambda m: "two layers write the same blob"),
]


def translate(reason):
    """A CHECK failure's text, in words: a known pattern's explanation, else
    the check's own explanation (the text after "(a vs. b)"), else the
    check itself without its source location."""
    for pattern, say in TRANSLATIONS:
        m = re.search(pattern, reason)
        if m:
            return say(m)
    m = re.match(r"Check failed: (.*?) \(([^()]*) vs\. ([^()]*)\)\s*(.*)$", reason) or \
        re.match(r"Check failed: (\S+)()()\s*(.*)$", reason)
    if m:
        cond, a, b, tail = m.groups()
        if tail:
            return tail.rstrip(".")
        vs = f" ({a} vs. {b})" if a else ""
        return f"Caffe's check {cond}{vs} fails"
    return reason
