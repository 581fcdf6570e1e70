"""The transpose of a network's Jacobian at its input, (df/dx)^T v, as
Caffe layers: the backward pass of the encoder written as a decoder that
shares its weights (Balestriero et al., PAPER_FACTS 4). Walking the graph
backwards, every blob gets an adjoint ``dec:<blob>``:

- Convolution -> Deconvolution with the same kernel/stride/pad sharing the
  weight blob by name, no bias; InnerProduct -> InnerProduct with
  ``transpose: true`` sharing the weight, no bias (+ a Reshape back to a
  feature map);
- ReLU -> gating by the encoder's own mask (Threshold > 0, no gradient into
  the mask) with an element-wise product;
- max pooling -> our Unpooling with the known switches, overlapping windows
  summed (exactly the gradient of overlapping max pooling); average pooling
  -> a fixed Deconvolution spreading each value over its window (1/k^2);
- a blob read by several layers (Caffe's implicit Split) -> the sum of the
  adjoints; an element-wise sum -> the same adjoint to each of its inputs.

Layers whose transpose is not built here are refused with the layer named."""
from ..caffe_io.shapes import conv_geometry, deconv_out, pool_geometry, shape_text
from ..errors import ReconDecError, where
from . import layers as L

PREFIX = "dec:"


def weight_name(layer_name):
    """The Caffe parameter name shared by an encoder layer's weight and its transpose."""
    return f"{layer_name}#0"


def encoder_layers(g, trainable=True, for_transpose=True):
    """The graph's layers for a train/deploy net: weights named so the
    transpose can share them, biases separate, msra weights when the
    deploy gives no filler; with ``for_transpose``, a Threshold mask after
    every ReLU and the switches of max pools (else neither: Caffe would
    print every unread blob)."""
    out = []
    for n in g.nodes:
        l = L.pb2().LayerParameter()
        l.CopyFrom(n.param)
        if n.type in ("Convolution", "InnerProduct"):
            fp = l.convolution_param if n.type == "Convolution" else l.inner_product_param
            if not fp.HasField("weight_filler"):
                fp.weight_filler.type = "msra"
            specs = [L.Param(1.0, 1.0, weight_name(n.name)), L.BIAS][: 2 if fp.bias_term else 1]
            if not trainable:
                specs = [L.Param(0.0, 0.0, s.name) for s in specs]
            L.set_params(l, specs)
        if n.type == "Pooling" and not for_transpose:
            del l.top[1:]
        out.append(l)
        if n.type == "ReLU" and for_transpose:
            m = L.layer(f"{n.name}/mask", "Threshold", [l.top[0]], [f"{l.top[0]}/mask"])
            m.threshold_param.threshold = 0.0
            m.propagate_down.append(False)   # a gate: no gradient (Threshold has no backward)
            out.append(m)
    return out


def _sum(name, blobs):
    if len(blobs) == 1:
        return [], blobs[0]
    s = L.layer(name, "Eltwise", blobs, [name])
    s.eltwise_param.operation = s.eltwise_param.SUM
    return [s], name


def transpose(g, v_blob, trainable=True, adjoints=None):
    """Layers computing (df/dx)^T v for v in ``v_blob`` (shaped like the
    graph's output); returns (layers, the adjoint of the input: ``dec:data``).
    A dict ``adjoints`` receives, for every blob of the graph that the output
    depends on, the blob of the decoder holding its adjoint (df/dblob)^T v."""
    adj = {g.output_blob: [v_blob]}
    out = []
    for n in reversed(g.nodes):
        top = n.param.top[0]
        if top not in adj:
            continue  # a branch that does not reach the output
        layers, grad = _sum(f"{PREFIX}{top}/sum", adj.pop(top))
        out += layers
        if adjoints is not None:
            adjoints[top] = grad
        for bottom, blob, ls in _backward(g, n, grad, trainable):
            out += ls
            adj.setdefault(bottom, []).append(blob)
    if "data" not in adj:
        raise ReconDecError(f"{g.path}: the output does not depend on the input")
    layers, grad = _sum(f"{PREFIX}data", adj.pop("data"))
    out += layers
    if grad != f"{PREFIX}data":
        out.append(L.layer(f"{PREFIX}data/copy", "Split", [grad], [f"{PREFIX}data"]))
    if adjoints is not None:
        adjoints["data"] = f"{PREFIX}data"
    return out, f"{PREFIX}data"


def _backward(g, n, grad, trainable):
    """[(bottom blob, its adjoint blob, layers computing it)] of node n."""
    t, name, bottom = n.type, f"{PREFIX}{n.name}", n.param.bottom[0]
    mult = 1.0 if trainable else 0.0
    if t == "Convolution":
        cp = n.param.convolution_param
        k, s, p, _ = conv_geometry(cp)
        c, h, w = n.in_shapes[0]
        got = (deconv_out(n.out_shape[1], k[0], s[0], p[0]), deconv_out(n.out_shape[2], k[1], s[1], p[1]))
        if got != (h, w):
            raise ReconDecError(where(g.path, n.name) + f"cannot transpose exactly: the input {h}x{w} is not "
                                f"covered by the stride (a deconvolution gives {got[0]}x{got[1]})")
        d = L.conv_layer(name, "Deconvolution", grad, name, c, k, s, p,
                         params=(L.Param(mult, mult, weight_name(n.name)),), bias=False)
        return [(bottom, name, [d])]
    if t == "InnerProduct":
        shape = n.in_shapes[0]
        dim = 1
        for x in shape:
            dim *= x
        flat = name if len(shape) == 1 else f"{name}/flat"
        ls = [L.ip_layer(name, grad, flat, dim, params=(L.Param(mult, mult, weight_name(n.name)),),
                         bias=False, transpose=True)]
        if flat != name:
            ls.append(L.reshape(f"{name}/reshape", flat, name, [0] + list(shape)))
        return [(bottom, name, ls)]
    if t == "ReLU":
        gate = L.layer(name, "Eltwise", [grad, f"{n.param.top[0]}/mask"], [name])
        gate.eltwise_param.operation = gate.eltwise_param.PROD
        gate.propagate_down.extend([True, False])
        return [(bottom, name, [gate])]
    if t == "Pooling":
        pp = n.param.pooling_param
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
        c, h, w = n.in_shapes[0]
        if pp.pool == pp.MAX:
            u = L.unpooling(name, grad, pp, n.in_shapes[0], n.out_shape, bottom, switches=n.param.top[1],
                            overlap_sum=True)  # the exact gradient of overlapping max pooling
            u.propagate_down.extend([True, False] + ([False] if len(u.bottom) == 3 else []))
            return [(bottom, name, [u])]
        if ph or pw or (h - kh) % sh or (w - kw) % sw:
            raise ReconDecError(where(g.path, n.name) + f"cannot transpose average pooling of {shape_text((c, h, w))} "
                                f"with kernel {kh}x{kw}, stride {sh}x{sw}, pad {ph}x{pw} exactly (windows must "
                                "tile the input without padding)")
        d = L.conv_layer(name, "Deconvolution", grad, name, c, (kh, kw), (sh, sw), (0, 0),
                         params=(L.FROZEN,), bias=False)
        d.convolution_param.group = c
        d.convolution_param.weight_filler.type = "constant"
        d.convolution_param.weight_filler.value = 1.0 / (kh * kw)
        d.convolution_param.weight_filler.ClearField("std")
        return [(bottom, name, [d])]
    if t == "Eltwise":
        coeffs = list(n.param.eltwise_param.coeff) or [1.0] * len(n.param.bottom)
        out = []
        for i, (b, c) in enumerate(zip(n.param.bottom, coeffs)):
            if c == 1.0:
                out.append((b, grad, []))
            else:
                s = L.layer(f"{name}/{i}", "Power", [grad], [f"{name}/{i}"])
                s.power_param.scale = c
                out.append((b, f"{name}/{i}", [s]))
        return out
    raise ReconDecError(where(g.path, n.name) + f"no transpose for layer type {t}")
