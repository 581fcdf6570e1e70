"""Caffe's protobuf messages: the single import of ``caffe_pb2``, and the
readers of nets, solvers and caffemodels with one-line errors naming the
file. Legacy nets (V1 ``layers {}``, ``input_dim``) are upgraded with
Caffe's own ``upgrade_net_proto_text``."""
import os
import subprocess
import tempfile

from ..errors import ReconDecError
from .tool import tool_path


def pb2():
    """pycaffe's ``caffe_pb2`` (imported lazily: it loads libcaffe)."""
    from caffe.proto import caffe_pb2
    return caffe_pb2


def merge_text(text, msg, path, what="net prototxt"):
    """Parses prototxt ``text`` into ``msg``; a one-line error naming
    ``path`` when it does not parse."""
    from google.protobuf import text_format
    try:
        text_format.Merge(text, msg)
    except text_format.ParseError as e:
        raise ReconDecError(f"{path}: not a valid {what} ({e})")
    return msg


def to_text(msg):
    from google.protobuf import text_format
    return text_format.MessageToString(msg)


def _read(path, what):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the {what} ({e.strerror})")


def read_text(path, msg, what):
    """A prototxt file parsed into ``msg``."""
    return merge_text(_read(path, what), msg, path, what)


def parse_net(text, path):
    return merge_text(text, pb2().NetParameter(), path)


def read_net(path):
    """A net prototxt as written (no upgrade): generated nets, train_vals."""
    return read_text(path, pb2().NetParameter(), "net prototxt")


def read_solver(path):
    return read_text(path, pb2().SolverParameter(), "solver prototxt")


def read_caffemodel(path):
    """A .caffemodel as a NetParameter; one-line errors when it is missing
    or does not parse."""
    if not os.path.isfile(path):
        raise ReconDecError(f"{path}: no such weights file")
    m = pb2().NetParameter()
    try:
        with open(path, "rb") as f:
            m.ParseFromString(f.read())
    except Exception:
        raise ReconDecError(f"{path}: not a caffemodel (cannot parse it)") from None
    return m


def caffemodel_layers(model):
    """{layer name: layer} of a caffemodel's layers that hold blobs, in
    the current (``layer``) or the legacy V1 (``layers``) field."""
    return {l.name: l for l in list(model.layers) + list(model.layer) if l.blobs}


def needs_upgrade(net):
    """True for the legacy formats Caffe itself would upgrade on load."""
    return bool(len(net.layers) or len(net.input) or len(net.input_dim) or len(net.input_shape))


def upgrade(path):
    """Text of ``path`` upgraded to the current format by Caffe's tool."""
    tool = tool_path("upgrade_net_proto_text")
    if not os.path.isfile(tool):
        raise ReconDecError(f"{path}: legacy-format prototxt, and Caffe's upgrade tool {tool} is missing")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "upgraded.prototxt")
        env = dict(os.environ, GLOG_minloglevel="2")
        proc = subprocess.run([tool, path, out], capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not os.path.isfile(out):
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ReconDecError(f"{path}: Caffe could not upgrade this legacy prototxt ({last})")
        return _read(out, "upgraded prototxt")


def load_net(path):
    """The net of ``path`` as a current-format NetParameter (upgraded if
    legacy): a classifier's deploy file as the user gives it."""
    path = os.fspath(path)
    net = parse_net(_read(path, "net prototxt"), path)
    if needs_upgrade(net):
        net = parse_net(upgrade(path), path)
    return net


def net_message(name, layers):
    n = pb2().NetParameter()
    n.name = name
    n.layer.extend(layers)
    return n
