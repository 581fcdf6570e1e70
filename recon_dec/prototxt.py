"""Reading a classifier's deploy prototxt: parse it as ``caffe_pb2.NetParameter``,
upgrade legacy (V1 ``layers {}`` / ``input_dim``) files with Caffe's own
upgrade tool, and check that the net is a plain chain we know how to mirror.

Every check runs in Python before Caffe sees the file, because a failed
Caffe CHECK aborts the whole process instead of raising."""
import os
import subprocess
import sys
import tempfile

from .errors import ReconDecError, where

# layer types the encoder analysis understands; the rest are rejected
ENCODER_TYPES = {"Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout",
                 "LRN", "BatchNorm", "Scale"}
INPUT_TYPES = {"Input", "Data", "ImageData"}
# classifier heads of a deploy/train file: dropped, the generator adds its own
HEAD_TYPES = {"Softmax", "SoftmaxWithLoss", "Accuracy"}


def _pb2():
    from caffe.proto import caffe_pb2
    return caffe_pb2


def upgrade_tool():
    """Caffe's ``upgrade_net_proto_text``, installed next to the Python
    interpreter of the virtual environment (pycaffe has no binding for
    ``UpgradeNetAsNeeded``)."""
    return os.path.join(os.path.dirname(sys.executable), "upgrade_net_proto_text")


def needs_upgrade(net):
    """True for the legacy formats Caffe itself would upgrade on load:
    V1 ``layers {}`` entries or the deprecated ``input``/``input_dim`` fields."""
    return bool(len(net.layers) or len(net.input) or len(net.input_dim) or len(net.input_shape))


def upgrade(path):
    """Text of ``path`` upgraded to the current format by Caffe's tool."""
    tool = upgrade_tool()
    if not os.path.isfile(tool):
        raise ReconDecError(f"{path}: legacy-format prototxt, and Caffe's upgrade tool {tool} is missing")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "upgraded.prototxt")
        env = dict(os.environ, GLOG_minloglevel="2")
        proc = subprocess.run([tool, path, out], capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not os.path.isfile(out):
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ReconDecError(f"{path}: Caffe could not upgrade this legacy prototxt ({last})")
        with open(out) as f:
            return f.read()


def merge_text(text, msg, path, what="net prototxt"):
    """Parses prototxt ``text`` into the message ``msg``; a one-line error
    naming ``path`` when it does not parse."""
    from google.protobuf import text_format
    try:
        text_format.Merge(text, msg)
    except text_format.ParseError as e:
        raise ReconDecError(f"{path}: not a valid {what} ({e})")
    return msg


def read_text(path, msg, what):
    """A prototxt file parsed into ``msg``, one-line errors for an unreadable
    or unparsable file."""
    try:
        text = open(path).read()
    except OSError as e:
        raise ReconDecError(f"{path}: {e.strerror}")
    return merge_text(text, msg, path, what)


def parse_text(text, path):
    return merge_text(text, _pb2().NetParameter(), path)


def read_caffemodel(path):
    """A .caffemodel as a NetParameter; a one-line error when it is missing
    or does not parse."""
    if not os.path.isfile(path):
        raise ReconDecError(f"{path}: no such weights file")
    m = _pb2().NetParameter()
    try:
        with open(path, "rb") as f:
            m.ParseFromString(f.read())
    except Exception:
        raise ReconDecError(f"{path}: not a caffemodel (cannot parse it)") from None
    return m


def load(path):
    """The net of ``path`` as a current-format ``NetParameter``."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the net prototxt ({e.strerror})")
    net = parse_text(text, path)
    if needs_upgrade(net):
        net = parse_text(upgrade(path), path)
    return net


def input_shape(net, path):
    """(N, C, H, W) of the net's input blob, from its Input layer (or a data
    layer's crop size when the file is a train_val net)."""
    for layer in net.layer:
        if layer.type == "Input":
            if not layer.input_param.shape:
                raise ReconDecError(where(path, layer.name) + "Input layer without a shape")
            dims = list(layer.input_param.shape[0].dim)
            if len(dims) != 4:
                raise ReconDecError(where(path, layer.name) + f"input shape {dims} is not N,C,H,W")
            return tuple(int(d) for d in dims)
    raise ReconDecError(f"{path}: no Input layer (a deploy prototxt with an input shape is needed)")


def validate(net, path):
    """Checks the net is a single chain of supported layers: every layer
    reads the previous output, no blob is read twice (a branch). Returns the
    encoder layers in order (input and head layers left out)."""
    layers = []
    current = None  # blob the next layer must read
    consumed = set()
    head = False
    for layer in net.layer:
        if any(r.HasField("phase") and r.phase == _pb2().TRAIN for r in layer.include):
            continue  # a train_val file: the TEST-phase view is the deploy net
        t = layer.type
        if t in INPUT_TYPES:
            if current is not None:
                raise ReconDecError(where(path, layer.name) + "a second input layer (branching nets are not supported)")
            current = layer.top[0]
            continue
        if t in ("Concat", "Eltwise", "Split", "Slice"):
            raise ReconDecError(where(path, layer.name) + f"layer type {t} makes a branching net; "
                                "only plain chains can be mirrored by a decoder")
        if t in HEAD_TYPES:
            head = True  # the classifier head: ignored, must be last
            continue
        if t not in ENCODER_TYPES:
            raise ReconDecError(where(path, layer.name) + f"unsupported layer type {t!r} (supported: "
                                + ", ".join(sorted(ENCODER_TYPES | INPUT_TYPES)) + ")")
        if head:
            raise ReconDecError(where(path, layer.name) + f"{t} layer after the classifier head")
        if current is None:
            raise ReconDecError(where(path, layer.name) + "the net has no Input layer before its first layer")
        if len(layer.bottom) != 1 or len(layer.top) != 1:
            raise ReconDecError(where(path, layer.name) + f"{len(layer.bottom)} bottoms / {len(layer.top)} tops; "
                                "only single-input single-output layers are supported")
        bottom, top = layer.bottom[0], layer.top[0]
        if bottom != current:
            raise ReconDecError(where(path, layer.name) + f"reads blob '{bottom}' but the previous layer wrote "
                                f"'{current}' (branching nets are not supported)")
        if top != bottom:
            if bottom in consumed:
                raise ReconDecError(where(path, layer.name) + f"blob '{bottom}' is read twice (a branch)")
            consumed.add(bottom)
        current = top
        layers.append(layer)
    if current is None:
        raise ReconDecError(f"{path}: no Input layer")
    if not layers:
        raise ReconDecError(f"{path}: the net has no layers to mirror")
    return layers


# --------------------------------------------------------------------------
# templates (prototxt_templates/ next to the package)
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt_templates")


def render(template_name, **values):
    """The template's text with ``$name`` placeholders filled; comments dropped."""
    import string
    path = os.path.join(TEMPLATES, template_name)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the template ({e.strerror})")
    body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    try:
        return string.Template(body).substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise ReconDecError(f"{path}: placeholder {e} has no value")


def data_layers(data, channels, phases):
    """Data layers from the templates. ``data`` is a dict: kind ("lmdb" or
    "imagelist"), sources {"TRAIN": path, "TEST": path}, batch {"TRAIN": n,
    "TEST": n}, crop, mirror, mean (list), scale, root, resize.
    Returns LayerParameters (one per phase given)."""
    template = {"lmdb": "data_lmdb.prototxt", "imagelist": "data_imagelist.prototxt",
                "scale-jitter": "data_scale_jitter.prototxt"}[data["kind"]]
    jitter = data.get("jitter") or {}
    mean = data.get("mean") or []
    if mean and len(mean) not in (1, channels):
        raise ReconDecError(f"--mean: {len(mean)} values for a {channels}-channel input")
    out = []
    for phase in phases:
        text = render(
            template, phase=phase,
            mirror=str(bool(data.get("mirror", True)) and phase == "TRAIN").lower(),
            crop=f"crop_size: {data['crop']}" if data.get("crop") else "",
            mean=" ".join(f"mean_value: {m:g}" for m in mean),
            scale=f"scale: {data['scale']:g}" if data.get("scale", 1.0) != 1.0 else "",
            source=data["sources"][phase], batch=data["batch"][phase],
            root=data.get("root", ""), shuffle=str(phase == "TRAIN").lower(),
            resize=data.get("resize", 0), color=str(channels == 3).lower(),
            mode="CENTER_SQUARE" if jitter.get("square_size") else "SCALE_JITTER",
            min_size=jitter.get("min_size", 256), max_size=jitter.get("max_size", 512),
            test_size=jitter.get("test_size", 256), square_size=jitter.get("square_size") or 256,
            threads=jitter.get("threads", 4))
        net = parse_text(text, os.path.join(TEMPLATES, template))
        out.extend(net.layer)
    return out
