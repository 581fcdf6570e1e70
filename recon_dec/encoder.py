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
import math
from dataclasses import dataclass, field

from . import prototxt
from .errors import ReconDecError, where

PARAM_TYPES = ("Convolution", "InnerProduct")


@dataclass
class EncLayer:
    """One encoder layer, renamed. ``param`` is its LayerParameter (names and
    blobs rewritten); shapes are (C, H, W) without the batch axis, or (D,)."""
    param: object
    in_shape: tuple
    out_shape: tuple
    source_name: str  # the name in the input file, for error messages

    @property
    def name(self):
        return self.param.name

    @property
    def type(self):
        return self.param.type

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
                         f"{_shape_text(m.in_shape)} -> {_shape_text(m.out_shape)}")
        if self.fc_layers:
            lines.append("fc block: " + ", ".join(f"{l.name} ({l.out_shape[0]})" for l in self.fc_layers))
        return "\n".join(lines)


def _shape_text(s):
    return "x".join(str(d) for d in s)


def _pool_text(pp):
    k, s, p = _pool_geometry(pp)
    return f"max {k[0]}x{k[1]}/{s[0]}" + (f" pad {p[0]}" if any(p) else "")


def _hw(repeated, has_hw, h, w, default):
    """Caffe's repeated spatial parameter or its ``_h``/``_w`` pair -> (h, w)."""
    if has_hw:
        return (h, w)
    vals = list(repeated)
    if not vals:
        return (default, default)
    return (vals[0], vals[1] if len(vals) > 1 else vals[0])


def conv_geometry(cp):
    """(kernel, stride, pad, dilation) as (h, w) pairs of a ConvolutionParameter."""
    k = _hw(cp.kernel_size, cp.HasField("kernel_h"), cp.kernel_h, cp.kernel_w, 0)
    s = _hw(cp.stride, cp.HasField("stride_h"), cp.stride_h, cp.stride_w, 1)
    p = _hw(cp.pad, cp.HasField("pad_h"), cp.pad_h, cp.pad_w, 0)
    d = _hw(cp.dilation, False, 0, 0, 1)
    return k, s, p, d


def _pool_geometry(pp):
    k = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size, pp.kernel_size)
    s = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride, pp.stride)
    p = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
    return k, s, p


def pool_out(size, k, s, p):
    """Caffe's pooled size (ceil mode, last window must start inside)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def unpool_out(size, k, s, p):
    """The Unpooling layer's default output size."""
    return (size - 1) * s + k - 2 * p


def _shape_after(layer, shape, path, src_name):
    t = layer.type
    if t == "Convolution":
        if len(shape) != 3:
            raise ReconDecError(where(path, src_name) + "convolution after an inner product")
        cp = layer.convolution_param
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(cp)
        if kh <= 0 or kw <= 0:
            raise ReconDecError(where(path, src_name) + "convolution without a kernel size")
        if cp.group and shape[0] % cp.group:
            raise ReconDecError(where(path, src_name) + f"{shape[0]} input channels not divisible by group {cp.group}")
        h = (shape[1] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        w = (shape[2] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if h <= 0 or w <= 0:
            raise ReconDecError(where(path, src_name) + f"input {_shape_text(shape)} too small for the kernel")
        return (cp.num_output, h, w)
    if t == "Pooling":
        pp = layer.pooling_param
        if len(shape) != 3:
            raise ReconDecError(where(path, src_name) + "pooling after an inner product")
        if pp.pool != pp.MAX or pp.global_pooling:
            raise ReconDecError(where(path, src_name) + "only (non-global) MAX pooling can be mirrored by unpooling")
        (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(pp)
        if kh <= 0 or sh <= 0:
            raise ReconDecError(where(path, src_name) + "pooling without kernel/stride")
        return (shape[0], pool_out(shape[1], kh, sh, ph), pool_out(shape[2], kw, sw, pw))
    if t == "InnerProduct":
        return (layer.inner_product_param.num_output,)
    return shape  # ReLU, Dropout, LRN, BatchNorm, Scale keep the shape


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
                      "Scale": "scale", "Pooling": "pool"}[t]
            l.name = f"{last_param}/{suffix}"
            l.bottom[0] = blob
            # pooling and LRN cannot run in place; the others keep the blob
            l.top[0] = l.name if t in ("Pooling", "LRN") else blob
            if t == "Pooling":
                del l.top[:]
                l.top.extend([l.name, l.name + "-mask"])
        if any(o[0].name == l.name for o in out):
            raise ReconDecError(where(path, src.name) + f"two layers would both be named '{l.name}'")
        blob = l.top[0]
        out.append((l, src.name))
    return out


def analyse(net, path, input_shape=None):
    """``Encoder`` of a validated NetParameter. ``input_shape`` (N,C,H,W)
    overrides the deploy file's input (smaller tests, other crops)."""
    layers = prototxt.validate(net, path)
    shape4 = tuple(input_shape) if input_shape else prototxt.input_shape(net, path)
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
    if not enc.macros:
        raise ReconDecError(f"{path}: no convolution; nothing to mirror")
    if enc.fc and len(enc.fc_layers) and enc.macros[-1].out_shape and len(enc.macros[-1].out_shape) != 3:
        raise ReconDecError(f"{path}: the fc block must follow a convolutional feature map")
    return enc


def load_encoder(path, input_shape=None):
    return analyse(prototxt.load(path), path, input_shape)


# --------------------------------------------------------------------------
def _set_params(l, specs):
    del l.param[:]
    for lr, decay in specs:
        p = l.param.add()
        p.lr_mult, p.decay_mult = lr, decay


def encoder_layers(enc, frozen, upto=None, masks=True, dropout=True):
    """Copies of the encoder layers for a generated net.

    ``frozen``: every parameter lr_mult 0 and decay_mult 0 (steps 2-3 and the
    inversion nets) and BatchNorm on its stored statistics; otherwise the
    usual lr_mult 1/2, decay_mult 1/0. ``upto``: stop after the layer
    writing this blob (the inversion nets need no classifier). ``masks``:
    give pools their switch top only when an unpooling layer reads it (Caffe
    would print every element of an unread blob in the training log)."""
    out = []
    for e in enc.layers:
        if out and upto is not None and upto in out[-1].top and not _more_in_place(enc, prev, upto):
            break
        prev = e
        l = copy.deepcopy(e.param)
        t = l.type
        if t in PARAM_TYPES:
            bias = (l.convolution_param.bias_term if t == "Convolution" else l.inner_product_param.bias_term)
            n = 2 if bias else 1
            fp = l.convolution_param if t == "Convolution" else l.inner_product_param
            if not fp.HasField("weight_filler"):  # training from scratch (no --weights)
                fp.weight_filler.type = "msra"
            _set_params(l, [(0.0, 0.0)] * n if frozen else [(1.0, 1.0), (2.0, 0.0)][:n])
        elif t == "BatchNorm":
            _set_params(l, [(0.0, 0.0)] * 3)  # running statistics, never learned by SGD
            if frozen:
                l.batch_norm_param.use_global_stats = True
        elif t == "Scale":
            n = 2 if l.scale_param.bias_term else 1
            _set_params(l, [(0.0, 0.0)] * n if frozen else [(1.0, 1.0), (1.0, 0.0)][:n])
        elif t == "Pooling" and not masks:
            del l.top[1:]
        elif t == "Dropout" and not dropout:
            continue
        out.append(l)
    return out


def _more_in_place(enc, e, blob):
    """True when a later layer still writes ``blob`` in place (a ReLU after
    the conv that ``upto`` names)."""
    i = enc.layers.index(e)
    return i + 1 < len(enc.layers) and enc.layers[i + 1].top == blob and enc.layers[i + 1].bottom == blob
