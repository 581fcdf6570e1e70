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
    except (text_format.ParseError, ValueError, TypeError, RecursionError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ReconDecError(f"{path}: not a valid {what} ({reason})") from None
    return msg


def to_text(msg):
    from google.protobuf import text_format
    return text_format.MessageToString(msg)


def read_text_file(path, what):
    """The text of ``path`` (UTF-8); one-line errors for a file that cannot
    be read or is binary / in another encoding (a caffemodel passed as a
    prototxt, a UTF-16 list)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except ValueError as e:  # e.g. an embedded NUL in the path
        raise ReconDecError(f"{path!r}: cannot read the {what} ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReconDecError(f"{path}: the {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start}; a binary file such as a caffemodel?)") from None
    if "\0" in text:
        raise ReconDecError(f"{path}: the {what} is not text (it holds NUL bytes; a binary file?)")
    return text


def _read(path, what):
    return read_text_file(path, what)


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


def check_caffemodel_file(path):
    """Cheap check that ``path`` starts like a serialised NetParameter (its
    first field is one of NetParameter's, with the right wire type), without
    reading a file of hundreds of MB. Returns ``path``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ReconDecError(f"{path}: cannot read the caffemodel ({e.strerror or e})") from None
    tag, shift, i = 0, 0, 0
    while i < len(head) and i < 5:
        tag |= (head[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not head[i - 1] & 0x80:
            break
    else:
        tag = 0
    field = pb2().NetParameter.DESCRIPTOR.fields_by_number.get(tag >> 3)
    if field is None or (tag & 7) not in _wire_types(field):
        raise ReconDecError(f"{path}: not a caffemodel (it does not start like a serialised Caffe net)")
    return path


def repeated(field):
    """A repeated field? (protobuf >= 6 has ``is_repeated``; older ``label``.)"""
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def _wire_types(field):
    """The protobuf wire types a field may be encoded with."""
    from google.protobuf.descriptor import FieldDescriptor as F
    if field.type in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE):
        return {2}
    packed = {2} if repeated(field) else set()
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64):
        return {1} | packed
    if field.type in (F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32):
        return {5} | packed
    return {0} | packed


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
        proc = subprocess.run([tool, path, out], capture_output=True, text=True, errors="replace", env=env)
        if proc.returncode != 0 or not os.path.isfile(out):
            raise ReconDecError(f"{path}: Caffe could not upgrade this legacy prototxt "
                                f"({fatal_reason(proc.stderr, proc.returncode)})")
        return _read(out, "upgraded prototxt")


def fatal_reason(stderr, returncode):
    """Why a Caffe process stopped, from its glog output: the text of its
    F-line (a CHECK failure or LOG(FATAL)) without Caffe's source location,
    else the signal or status (never a stack-frame line)."""
    from .logs import FATAL
    for line in stderr.splitlines():
        m = FATAL.match(line.strip())
        if m:
            return " ".join(m.group(1).split())
    if returncode is not None and returncode < 0:
        import signal
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"Caffe crashed ({name})"
    return f"Caffe exited with status {returncode}"


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
