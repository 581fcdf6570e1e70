"""Macro-layer analysis of a classifier (Section 3 of the paper): the
convolutions up to and including a max pool form one macro-layer; the inner
products after the last convolution form the fc block.

The encoder is rebuilt in the authors' naming convention (PAPER_FACTS 1):
parameterised layers keep their names (so pretrained caffemodels load by
name), ReLUs are ``<conv>/relu``, the pool after the last conv of a block is
``<conv>/pool`` with the switches ``<conv>/pool-mask`` as second top, dropout
is ``<fc>/dropout``. Blob shapes are computed here with Caffe's formulas, so a
net Caffe would reject fails with a message instead of aborting the process."""
import copy
from dataclasses import dataclass, field

from ..caffe_io import protos
from ..caffe_io.shapes import conv_geometry, pool_geometry, pool_out, shape_text
from ..errors import ReconDecError, where
from ..values import INT_MAX

PARAM_TYPES = ("Convolution", "InnerProduct")

# layer types the encoder analysis understands; the rest are rejected
ENCODER_TYPES = {"Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout",
                 "LRN", "BatchNorm", "Scale"}
INPUT_TYPES = {"Input", "Data", "ImageData"}
# classifier heads of a deploy/train file: dropped, the generator adds its own
HEAD_TYPES = {"Softmax", "SoftmaxWithLoss", "Accuracy"}
# names the generated nets use for what they add (inputs, heads, image target,
# decoders): an encoder layer or blob may not take them
RESERVED_NAMES = {"data", "label", "loss", "prob"}
RESERVED_PREFIXES = ("dec:", "data/", "label/", "accuracy/", "loss/", "prob/")


def reserved(name):
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


class LayerView:
    """Name and type of a wrapped LayerParameter ``param``."""

    @property
    def name(self):
        return self.param.name

    @property
    def type(self):
        return self.param.type


@dataclass
class EncLayer(LayerView):
    """One encoder layer, renamed. ``param`` is its LayerParameter (names and
    blobs rewritten); shapes are (C, H, W) without the batch axis, or (D,)."""
    param: object
    in_shape: tuple
    out_shape: tuple
    source_name: str  # the name in the input file, for error messages

    @property
    def bottom(self):
        return self.param.bottom[0]

    @property
    def top(self):
        return self.param.top[0]


@dataclass
class MacroLayer:
    """Convs (with their ReLU/LRN/BN) up to and including a max pool.
    ``input_blob`` is what the first conv reads; ``output_blob`` what the next
    macro-layer reads (the pool's top). ``pool`` is None for a trailing
    block of convolutions without pooling."""
    index: int
    layers: list
    input_blob: str
    input_name: str   # the last parameterised layer before it, or "data"
    in_shape: tuple
    output_blob: str = ""
    out_shape: tuple = ()

    @property
    def convs(self):
        return [l for l in self.layers if l.type == "Convolution"]

    @property
    def pool(self):
        pools = [l for l in self.layers if l.type == "Pooling"]
        return pools[0] if pools else None

    @property
    def last_conv(self):
        return self.convs[-1]


@dataclass
class Encoder:
    path: str
    input_shape: tuple          # (N, C, H, W)
    layers: list                # all EncLayers in order
    macros: list = field(default_factory=list)
    fc: list = field(default_factory=list)       # fc-block layers (IP, ReLU, Dropout)

    @property
    def fc_layers(self):
        return [l for l in self.fc if l.type == "InnerProduct"]

    @property
    def param_layers(self):
        return [l for l in self.layers if l.type in PARAM_TYPES + ("BatchNorm", "Scale")]

    @property
    def num_classes(self):
        ips = self.fc_layers
        return ips[-1].param.inner_product_param.num_output if ips else None

    @property
    def output_blob(self):
        return self.layers[-1].top

    def layer(self, name):
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def producer_of(self, blob):
        """The last layer writing ``blob`` (the in-place chain's end)."""
        found = None
        for l in self.layers:
            if l.top == blob:
                found = l
        return found

    def describe(self):
        """The macro-layer analysis as text (printed and put in README.md)."""
        n, c, h, w = self.input_shape
        lines = [f"source: {self.path}", f"input: data {c}x{h}x{w} (batch {n})"]
        for m in self.macros:
            convs = ", ".join(l.name for l in m.convs)
            pool = m.pool
            pdesc = (f" + {pool.name} ({_pool_text(pool.param.pooling_param)})" if pool else " (no pooling)")
            lines.append(f"macro-layer {m.index}: {convs}{pdesc}: "
                         f"{shape_text(m.in_shape)} -> {shape_text(m.out_shape)}")
        if self.fc_layers:
            lines.append("fc block: " + ", ".join(f"{l.name} ({l.out_shape[0]})" for l in self.fc_layers))
        return "\n".join(lines)


def _pool_text(pp):
    k, s, p = pool_geometry(pp)
    return f"max {k[0]}x{k[1]}/{s[0]}" + (f" pad {p[0]}" if any(p) else "")


def _shape_after(layer, shape, path, src_name):
    t = layer.type
    at = where(path, src_name)
    if t == "Convolution":
        if len(shape) != 3:
            raise ReconDecError(at + "convolution after an inner product")
        cp = layer.convolution_param
        _check_geometry_fields(cp, at, "convolution")
        if cp.axis != 1:
            raise ReconDecError(at + f"convolution axis {cp.axis}: only the channel axis 1 is supported")
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(cp)
        if kh <= 0 or kw <= 0:
            raise ReconDecError(at + "convolution without a kernel size")
        if sh <= 0 or sw <= 0:
            raise ReconDecError(at + f"stride {sh}x{sw}: strides must be >= 1")
        if dh <= 0 or dw <= 0:
            raise ReconDecError(at + f"dilation {dh}x{dw}: must be >= 1")
        if cp.num_output < 1:
            raise ReconDecError(at + "num_output must be >= 1")
        if cp.group < 1:
            raise ReconDecError(at + f"group {cp.group}: must be >= 1")
        if shape[0] % cp.group:
            raise ReconDecError(at + f"{shape[0]} input channels not divisible by group {cp.group}")
        if cp.num_output % cp.group:
            raise ReconDecError(at + f"num_output {cp.num_output} not divisible by group {cp.group}")
        h = (shape[1] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        w = (shape[2] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if h <= 0 or w <= 0:
            raise ReconDecError(at + f"input {shape_text(shape)} too small for the kernel")
        _check_count((cp.num_output, shape[0] // cp.group, kh, kw), at, "its weights")
        return _check_count((cp.num_output, h, w), at, "its output")
    if t == "Pooling":
        pp = layer.pooling_param
        if len(shape) != 3:
            raise ReconDecError(at + "pooling after an inner product")
        if pp.pool != pp.MAX or pp.global_pooling:
            raise ReconDecError(at + "only (non-global) MAX pooling can be mirrored by unpooling")
        if pp.HasField("kernel_size") and (pp.HasField("kernel_h") or pp.HasField("kernel_w")):
            raise ReconDecError(at + "kernel_size together with kernel_h/kernel_w: give one or the other")
        if pp.HasField("pad") and (pp.HasField("pad_h") or pp.HasField("pad_w")):
            raise ReconDecError(at + "pad together with pad_h/pad_w: give one or the other")
        if pp.HasField("stride") and (pp.HasField("stride_h") or pp.HasField("stride_w")):
            raise ReconDecError(at + "stride together with stride_h/stride_w: give one or the other")
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
        if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0:
            raise ReconDecError(at + "pooling without kernel/stride")
        if ph >= kh or pw >= kw:
            raise ReconDecError(at + f"pad {ph}x{pw} must be smaller than the kernel {kh}x{kw}")
        if kh > shape[1] + 2 * ph or kw > shape[2] + 2 * pw:
            raise ReconDecError(at + f"kernel {kh}x{kw} is larger than its input {shape_text(shape)}")
        return _check_count((shape[0], pool_out(shape[1], kh, sh, ph), pool_out(shape[2], kw, sw, pw)),
                            at, "its output")
    if t == "InnerProduct":
        ip = layer.inner_product_param
        if ip.axis != 1:
            raise ReconDecError(at + f"inner product axis {ip.axis}: only axis 1 is supported")
        if ip.num_output < 1:
            raise ReconDecError(at + "num_output must be >= 1")
        fan_in = 1
        for d in shape:
            fan_in *= d
        _check_count((ip.num_output, fan_in), at, "its weights")
        return (ip.num_output,)
    if t == "LRN":
        lp = layer.lrn_param
        if lp.local_size % 2 != 1:
            raise ReconDecError(at + f"local_size {lp.local_size}: Caffe's LRN takes odd sizes only")
    if t == "Dropout" and not 0 <= layer.dropout_param.dropout_ratio < 1:
        raise ReconDecError(at + f"dropout_ratio {layer.dropout_param.dropout_ratio:g}: must be in [0, 1)")
    return shape  # ReLU, Dropout, LRN, BatchNorm, Scale keep the shape


def _check_count(shape, at, what):
    """Caffe's blobs hold at most INT_MAX values."""
    n = 1
    for d in shape:
        n *= d
    if n > INT_MAX:
        raise ReconDecError(at + f"{what} would be {shape_text(shape)} = {n} values, more than a Caffe "
                            f"blob holds (INT_MAX = {INT_MAX})")
    return tuple(shape)


def _check_geometry_fields(cp, at, what):
    """Caffe's rules on the spatial fields of a convolution (2-D here)."""
    for name, h, w in (("kernel_size", "kernel_h", "kernel_w"), ("stride", "stride_h", "stride_w"),
                       ("pad", "pad_h", "pad_w")):
        if len(getattr(cp, name)) and (cp.HasField(h) or cp.HasField(w)):
            raise ReconDecError(at + f"{name} together with {h}/{w}: give one or the other")
        if cp.HasField(h) != cp.HasField(w):
            raise ReconDecError(at + f"{h} and {w} go together")
        if len(getattr(cp, name)) > 2:
            raise ReconDecError(at + f"{len(getattr(cp, name))} values of {name} for a 2-D {what}")
    if len(cp.dilation) > 2:
        raise ReconDecError(at + f"{len(cp.dilation)} values of dilation for a 2-D {what}")


def _rename(layers, path):
    """Renames layers/blobs to the authors' convention; returns new
    LayerParameters with (source name) pairs."""
    out = []
    last_param = None  # name of the last conv/fc (names the followers)
    blob = "data"
    for src in layers:
        l = copy.deepcopy(src)
        t = l.type
        if t in PARAM_TYPES:
            last_param = l.name
            l.bottom[0] = blob
            l.top[0] = l.name
        else:
            if last_param is None:
                raise ReconDecError(where(path, src.name) + f"{t} before the first convolution is not supported")
            suffix = {"ReLU": "relu", "Dropout": "dropout", "LRN": "norm", "BatchNorm": "bn",
                      "Scale": "scale", "Pooling": "pool", "Sigmoid": "sigmoid", "TanH": "tanh"}[t]
            l.name = f"{last_param}/{suffix}"
            l.bottom[0] = blob
            # pooling and LRN cannot run in place; the others keep the blob
            l.top[0] = l.name if t in ("Pooling", "LRN") else blob
            if t == "Pooling":
                del l.top[:]
                l.top.extend([l.name, l.name + "-mask"])
        if any(o[0].name == l.name for o in out):
            raise ReconDecError(where(path, src.name) + f"two layers would both be named '{l.name}'")
        for name in [l.name] + list(l.top):
            if reserved(name):
                raise ReconDecError(where(path, src.name) + f"the name '{name}' is reserved for what the "
                                    "generator adds (data, label, loss, prob, data/..., label/..., "
                                    "accuracy/..., dec:...); rename the layer")
        blob = l.top[0]
        out.append((l, src.name))
    return out


def input_shape_of(net, path):
    """(N, C, H, W) of the net's input blob, from its Input layer (or a data
    layer's crop size when the file is a train_val net)."""
    for layer in net.layer:
        if layer.type == "Input":
            if not layer.input_param.shape:
                raise ReconDecError(where(path, layer.name) + "Input layer without a shape")
            dims = list(layer.input_param.shape[0].dim)
            if len(dims) != 4:
                raise ReconDecError(where(path, layer.name) + f"input shape {dims} is not N,C,H,W")
            if min(dims) < 1:
                raise ReconDecError(where(path, layer.name) + f"input shape {shape_text(dims)}: every "
                                    "dimension must be >= 1")
            return _check_count(tuple(int(d) for d in dims), where(path, layer.name), "the input")
    raise ReconDecError(f"{path}: no Input layer (a deploy prototxt with an input shape is needed)")


def validate(net, path, types=ENCODER_TYPES):
    """Checks the net is a single chain of supported layers: every layer
    reads the previous output, no blob is read twice (a branch). Returns the
    encoder layers in order (input and head layers left out)."""
    layers = []
    current = None  # blob the next layer must read
    consumed = set()
    head = False
    for layer in net.layer:
        if any(r.HasField("phase") and r.phase == protos.pb2().TRAIN for r in layer.include):
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
        if t not in types:
            raise ReconDecError(where(path, layer.name) + f"unsupported layer type {t!r} (supported: "
                                + ", ".join(sorted(set(types) | INPUT_TYPES)) + ")")
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


def analyse(net, path, input_shape=None, types=ENCODER_TYPES, require_conv=True):
    """``Encoder`` of a validated NetParameter. ``input_shape`` (N,C,H,W)
    overrides the deploy file's input (smaller tests, other crops).
    ``types``: the layer types accepted; ``require_conv``: refuse a net
    without convolutions (an MLP has no macro-layers, only the fc block)."""
    layers = validate(net, path, types)
    shape4 = tuple(input_shape) if input_shape else input_shape_of(net, path)
    shape = tuple(shape4[1:])
    enc_layers = []
    for l, src_name in _rename(layers, path):
        out_shape = _shape_after(l, shape, path, src_name)
        enc_layers.append(EncLayer(l, shape, out_shape, src_name))
        shape = out_shape
    enc = Encoder(path, shape4, enc_layers)

    # group: macro-layers end at a pool; the fc block starts at the first IP
    current = None
    in_fc = False
    last_param_name = "data"
    for l in enc_layers:
        if l.type == "InnerProduct":
            in_fc = True
        if in_fc:
            if l.type in ("Convolution", "Pooling"):
                raise ReconDecError(where(path, l.source_name) + f"{l.type} after the fc block is not supported")
            enc.fc.append(l)
            continue
        if current is None:
            if l.type != "Convolution":
                raise ReconDecError(where(path, l.source_name) + f"{l.type} without a convolution before it in its macro-layer")
            current = MacroLayer(len(enc.macros) + 1, [], l.bottom, last_param_name, l.in_shape)
        current.layers.append(l)
        if l.type == "Convolution":
            last_param_name = l.name
        if l.type == "Pooling":
            current.output_blob, current.out_shape = l.top, l.out_shape
            enc.macros.append(current)
            current = None
    if current is not None:  # convs after the last pool: a macro-layer without pooling
        last = current.layers[-1]
        current.output_blob, current.out_shape = last.top, last.out_shape
        enc.macros.append(current)
    if not enc.macros and require_conv:
        raise ReconDecError(f"{path}: no convolution; nothing to mirror")
    if enc.macros and enc.fc_layers and len(enc.macros[-1].out_shape) != 3:
        raise ReconDecError(f"{path}: the fc block must follow a convolutional feature map")
    return enc


def load_encoder(path, input_shape=None, types=ENCODER_TYPES, require_conv=True):
    return analyse(protos.load_net(path), path, input_shape, types, require_conv)
