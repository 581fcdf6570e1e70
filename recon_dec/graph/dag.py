"""A classifier as a directed acyclic graph of layers (residual nets
included), for methods that need more than a chain: every blob written once
(in-place layers get a top of their own, named after the layer, so that
each layer's output stays readable), blob shapes from Caffe's formulas, and
the consumers of every blob (Caffe's implicit splits). Layer names are kept:
pretrained caffemodels still load by name."""
import copy
from dataclasses import dataclass, field

from ..caffe_io import protos
from ..caffe_io.shapes import conv_geometry, conv_out, pool_geometry, pool_out, shape_text
from ..errors import ReconDecError, where
from .encoder import HEAD_TYPES, INPUT_TYPES, LayerView, input_shape_of

DAG_TYPES = {"Convolution", "InnerProduct", "ReLU", "Pooling", "Eltwise"}


@dataclass
class Node(LayerView):
    param: object            # LayerParameter, blobs renamed
    in_shapes: list          # (C, H, W) or (D,) per bottom
    out_shape: tuple

    @property
    def source_name(self):
        """The name in the deploy file (layer names are kept)."""
        return self.param.name


@dataclass
class Graph:
    path: str
    input_shape: tuple                       # (N, C, H, W)
    nodes: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)      # blob -> shape without batch
    consumers: dict = field(default_factory=dict)   # blob -> [node]

    @property
    def output_blob(self):
        return self.nodes[-1].param.top[0]

    @property
    def layers(self):
        """The nodes, under the chain analysis' name (generic code reads it)."""
        return self.nodes

    @property
    def param_layers(self):
        return [n for n in self.nodes if n.type in ("Convolution", "InnerProduct")]

    def describe(self):
        n, c, h, w = self.input_shape
        lines = [f"source: {self.path}", f"input: data {c}x{h}x{w} (batch {n})"]
        for node in self.nodes:
            lines.append(f"{node.name} ({node.type}): {' + '.join(node.param.bottom)} -> {node.param.top[0]} "
                         f"{shape_text(node.out_shape)}")
        return "\n".join(lines)


def _shape(l, shapes, path):
    t, ins = l.type, [shapes[b] for b in l.bottom]
    x = ins[0]
    if t == "Convolution":
        cp = l.convolution_param
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(cp)
        if len(x) != 3 or kh <= 0 or sh <= 0 or cp.num_output <= 0:
            raise ReconDecError(where(path, l.name) + "convolution without a feature map, kernel or outputs")
        if (dh, dw) != (1, 1) or cp.group > 1:
            raise ReconDecError(where(path, l.name) + "dilated or grouped convolutions are not supported here")
        h, w = conv_out(x[1], kh, sh, ph), conv_out(x[2], kw, sw, pw)
        if h <= 0 or w <= 0:
            raise ReconDecError(where(path, l.name) + f"input {shape_text(x)} too small for the kernel")
        return (cp.num_output, h, w)
    if t == "Pooling":
        pp = l.pooling_param
        if len(x) != 3 or pp.global_pooling or pp.pool not in (pp.MAX, pp.AVE):
            raise ReconDecError(where(path, l.name) + "only max and average pooling of a feature map is supported")
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
        if kh <= 0 or sh <= 0:
            raise ReconDecError(where(path, l.name) + "pooling without kernel/stride")
        return (x[0], pool_out(x[1], kh, sh, ph), pool_out(x[2], kw, sw, pw))
    if t == "InnerProduct":
        if l.inner_product_param.num_output <= 0:
            raise ReconDecError(where(path, l.name) + "inner product without outputs")
        return (l.inner_product_param.num_output,)
    if t == "Eltwise":
        ep = l.eltwise_param
        if ep.operation != ep.SUM:
            raise ReconDecError(where(path, l.name) + "only element-wise SUM is supported (residual connections)")
        if any(s != x for s in ins):
            raise ReconDecError(where(path, l.name) + "element-wise sum of blobs of different shapes "
                                + ", ".join(shape_text(s) for s in ins))
        return x
    return x  # ReLU


def analyse(net, path, input_shape=None, types=DAG_TYPES):
    """The Graph of a deploy NetParameter whose layers are ``types``."""
    g = Graph(path, tuple(input_shape) if input_shape else input_shape_of(net, path))
    current = {}     # blob name in the file -> its SSA name
    for layer in net.layer:
        t = layer.type
        if t in INPUT_TYPES:
            if current:
                raise ReconDecError(where(path, layer.name) + "a second input layer")
            current[layer.top[0]] = "data"
            g.shapes["data"] = tuple(g.input_shape[1:])
            continue
        if t in HEAD_TYPES:
            continue
        if t not in types:
            raise ReconDecError(where(path, layer.name) + f"unsupported layer type {t!r} (supported: "
                                + ", ".join(sorted(types | {"Input"})) + ")")
        if not current:
            raise ReconDecError(where(path, layer.name) + "the net has no Input layer before its first layer")
        if len(layer.top) != 1 or not layer.bottom or (t != "Eltwise" and len(layer.bottom) != 1):
            raise ReconDecError(where(path, layer.name) + f"{len(layer.bottom)} bottoms / {len(layer.top)} tops "
                                "are not supported here")
        l = copy.deepcopy(layer)
        for i, b in enumerate(layer.bottom):
            if b not in current:
                raise ReconDecError(where(path, layer.name) + f"reads blob '{b}', which no earlier layer writes")
            l.bottom[i] = current[b]
        top = layer.top[0]
        ssa = layer.name if (top in layer.bottom or top in current) else top
        if ssa in g.shapes:
            raise ReconDecError(where(path, layer.name) + f"writes blob '{ssa}', which another layer writes")
        if t == "Pooling" and l.pooling_param.pool == l.pooling_param.MAX:
            del l.top[:]
            l.top.extend([ssa, f"{ssa}-mask"])   # the switches, for the transposed pooling
        else:
            l.top[0] = ssa
        node = Node(l, [g.shapes[b] for b in l.bottom], _shape(l, g.shapes, path))
        g.shapes[ssa] = node.out_shape
        for b in l.bottom:
            g.consumers.setdefault(b, []).append(node)
        g.nodes.append(node)
        current[top] = ssa
    if not g.nodes:
        raise ReconDecError(f"{path}: the net has no layers")
    return g


def load_graph(path, input_shape=None, types=DAG_TYPES):
    return analyse(protos.load_net(path), path, input_shape, types)
