"""Decoding pathways (Section 3.2) as Caffe layers, named by the contract in
PAPER_FACTS 1: a decoder is a list of mirrored steps, one per encoder
macro-layer (unpool, then one Deconvolution per conv, in reverse), plus the
fc decoders for the inversion nets.

A decoder step is built from the encoder analysis, never from hard-coded
VGG sizes, so any plain conv/pool/fc chain mirrors the same way."""
from dataclasses import dataclass

from .encoder import conv_geometry, _pool_geometry, unpool_out
from .errors import ReconDecError, where

KNOWN, FIXED = "known", "fixed"
IMAGE_TARGET = "data/scaled"      # data x 1/255, the image loss target
DECONV_STD = 0.001                # gaussian std of every decoder weight

# (unpool mode, wiring) of each variant; baseline has no decoder
VARIANTS = {
    "sae-first": (FIXED, "first"),
    "sae-all": (FIXED, "all"),
    "sae-layerwise": (FIXED, "layerwise"),
    "swwae-first": (KNOWN, "first"),
    "swwae-all": (KNOWN, "all"),
    "swwae-layerwise": (KNOWN, "layerwise"),
    "baseline": (None, None),
}

# Loss weights of SAE/SWWAE-all and -layerwise (PAPER_FACTS table), keyed by
# the reconstructed target: 0 = the image, j = the output of macro-layer j.
# Only VGG16's five are published; a deeper net reuses pool4's weight.
PAPER_LOSS_WEIGHTS = {0: 1e-4, 1: 1e-12, 2: 1e-12, 3: 1e-12, 4: 1e-10}
# Step-2 learning rate of the decoder of macro-layer k (Table S-1, VGG).
PAPER_STEP2_LR = {1: 3e-9, 2: 1e-8, 3: 3e-12, 4: 1e-12, 5: 1e-11}


def paper_loss_weight(j):
    return PAPER_LOSS_WEIGHTS.get(j, PAPER_LOSS_WEIGHTS[4])


def paper_step2_lr(k):
    return PAPER_STEP2_LR.get(k, PAPER_STEP2_LR[5])


def _pb2():
    from caffe.proto import caffe_pb2
    return caffe_pb2


# --------------------------------------------------------------------------
# layer constructors
def _learnable(layer, lr_scale, bias=True):
    """Decoder parameters: lr_mult 1/2, decay_mult 1/0 (scaled by
    ``lr_scale`` for per-macro-layer learning rates), gaussian weights."""
    w = layer.param.add()
    w.lr_mult, w.decay_mult = 1.0 * lr_scale, 1.0
    if bias:
        b = layer.param.add()
        b.lr_mult, b.decay_mult = 2.0 * lr_scale, 0.0


def _filled(p):
    p.weight_filler.type = "gaussian"
    p.weight_filler.std = DECONV_STD
    p.bias_filler.type = "constant"
    p.bias_filler.value = 0.0


def layer(name, type_, bottoms, tops):
    l = _pb2().LayerParameter()
    l.name, l.type = name, type_
    l.bottom.extend(bottoms)
    l.top.extend(tops)
    return l


def conv_layer(name, type_, bottom, top, num_output, kernel, stride=(1, 1), pad=(0, 0), lr_scale=1.0):
    l = layer(name, type_, [bottom], [top])
    cp = l.convolution_param
    cp.num_output = num_output
    if kernel[0] == kernel[1]:
        cp.kernel_size.append(kernel[0])
    else:
        cp.kernel_h, cp.kernel_w = kernel
    if stride != (1, 1):
        if stride[0] == stride[1]:
            cp.stride.append(stride[0])
        else:
            cp.stride_h, cp.stride_w = stride
    if pad != (0, 0):
        if pad[0] == pad[1]:
            cp.pad.append(pad[0])
        else:
            cp.pad_h, cp.pad_w = pad
    _filled(cp)
    _learnable(l, lr_scale)
    return l


def ip_layer(name, bottom, top, num_output, lr_scale=1.0):
    l = layer(name, "InnerProduct", [bottom], [top])
    l.inner_product_param.num_output = num_output
    _filled(l.inner_product_param)
    _learnable(l, lr_scale)
    return l


def relu(name, blob):
    return layer(name, "ReLU", [blob], [blob])


def euclidean_loss(target_name, dec_blob, target_blob, weight):
    l = layer(f"dec:loss@{target_name}", "EuclideanLoss", [dec_blob, target_blob], [f"dec:loss@{target_name}"])
    l.loss_weight.append(weight)
    return l


# --------------------------------------------------------------------------
@dataclass
class Output:
    """A reconstruction a decoder produces: ``blob`` is the decoder's blob,
    ``target`` the encoder blob it reconstructs, ``target_name`` names the
    loss, ``level`` 0 for the image, j for the output of macro-layer j."""
    blob: str
    target: str
    target_name: str
    level: int
    macro: int   # the macro-layer whose decoder produced it (for per-decoder LR)


def _unpool(enc, macro, in_blob, mode):
    pool = macro.pool
    pp = pool.param.pooling_param
    base = pool.name.rsplit("/", 1)[0]
    name = f"dec:{base}/unpool"
    bottoms = [in_blob]
    if mode == KNOWN:
        bottoms.append(pool.param.top[1])  # the switches
    (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(pp)
    want = pool.in_shape[1:]
    got = (unpool_out(pool.out_shape[1], kh, sh, ph), unpool_out(pool.out_shape[2], kw, sw, pw))
    if got != tuple(want):
        # ceil-mode pooling of an odd size: the encoder's pre-pool blob gives the size
        bottoms.append(pool.bottom)
    l = layer(name, "Unpooling", bottoms, [name])
    l.pooling_param.CopyFrom(pp)
    l.unpooling_param.switches = (l.unpooling_param.KNOWN if mode == KNOWN else l.unpooling_param.FIXED)
    return l


def _check_size(enc, conv, name, got):
    want = tuple(conv.in_shape[1:])
    if tuple(got) != want:
        raise ReconDecError(where(enc.path, conv.source_name) + f"cannot mirror: the decoder layer {name} would "
                            f"output {got[0]}x{got[1]} but the convolution reads {want[0]}x{want[1]}")


def _mirror_conv(enc, conv, in_blob, out_blob, target_is_image, lr_scale):
    """Layers inverting one convolution: a Deconvolution with the conv's
    kernel and pad (3x3 pad 1 for VGG), or, for a strided first conv
    (AlexNet conv1), the pre/body/post triple of the authors."""
    cp = conv.param.convolution_param
    (k, s, p, d) = conv_geometry(cp)
    cin = conv.in_shape[0]
    name = f"dec:{conv.name}"
    if d != (1, 1):
        raise ReconDecError(where(enc.path, conv.source_name) + "cannot mirror a dilated convolution")
    if s == (1, 1):
        got = (conv.out_shape[1] - 1 + k[0] - 2 * p[0], conv.out_shape[2] - 1 + k[1] - 2 * p[1])
        _check_size(enc, conv, name, got)
        layers = [conv_layer(name, "Deconvolution", in_blob, out_blob, cin, k, (1, 1), p, lr_scale)]
        if not target_is_image:
            layers.append(relu(f"{name}/relu", out_blob))
        return layers
    if not target_is_image:
        raise ReconDecError(where(enc.path, conv.source_name) + f"cannot mirror: stride {s[0]} convolution that "
                            "does not read the image (only a strided first layer is inverted, AlexNet-style)")
    # conv1 with stride 4 ~ a conv plus two 2x2 poolings: three layers invert it
    got = ((conv.out_shape[1] - 1) * s[0] + k[0] - 2 * p[0], (conv.out_shape[2] - 1) * s[1] + k[1] - 2 * p[1])
    _check_size(enc, conv, f"{name}-body", got)
    n = cp.num_output
    pre, body = f"{name}-pre", f"{name}-body"
    return [
        conv_layer(pre, "Convolution", in_blob, pre, n, (5, 5), (1, 1), (2, 2), lr_scale),
        relu(f"{pre}/relu", pre),
        conv_layer(body, "Deconvolution", pre, body, max(1, n // 2), k, s, p, lr_scale),
        relu(f"{body}/relu", body),
        conv_layer(f"{name}-post", "Deconvolution", body, out_blob, cin, (5, 5), (1, 1), (2, 2), lr_scale),
    ]


def _target_of(enc, macro_index):
    """(encoder blob, name, level) that the decoder of macro-layer
    ``macro_index`` reconstructs: the previous macro-layer's output, or the
    scaled image."""
    if macro_index == 1:
        return IMAGE_TARGET, IMAGE_TARGET, 0
    prev = enc.macros[macro_index - 2]
    return prev.output_blob, prev.last_conv.name, macro_index - 1


def mirror_macro(enc, macro, in_blob, mode, suffix="", lr_scale=1.0, from_conv=None):
    """Decoder of one macro-layer: reads ``in_blob`` (a reconstruction of the
    macro-layer's output), returns (layers, Output). ``suffix`` marks the
    output blob of an independent (layerwise) decoder, e.g. ``[2]``.
    ``from_conv`` starts inside the macro-layer (after that conv, before the
    pool) for the inversion nets of AlexNet's conv3/conv4."""
    layers = []
    blob = in_blob
    convs = macro.convs
    if from_conv is None and macro.pool is not None:
        unpool = _unpool(enc, macro, blob, mode)
        layers.append(unpool)
        blob = unpool.top[0]
    if from_conv is not None:
        convs = convs[: [c.name for c in convs].index(from_conv) + 1]
    target, target_name, level = _target_of(enc, macro.index)
    for i in range(len(convs) - 1, -1, -1):
        conv = convs[i]
        last = i == 0
        if last:
            out = "dec:data" if level == 0 else f"dec:{target_name}{suffix}"
        else:
            out = f"dec:{convs[i - 1].name}"
        layers += _mirror_conv(enc, conv, blob, out, last and level == 0, lr_scale)
        blob = out
    return layers, Output(blob, target, target_name, level, macro.index)


def mirror_fc(enc, start_fc, in_blob, lr_scale=1.0):
    """dec:fcK ... dec:fc6 (each IP + ReLU), then a reshape to the last
    macro-layer's output shape. Returns (layers, blob)."""
    ips = enc.fc_layers
    names = [l.name for l in ips]
    idx = names.index(start_fc)
    layers = []
    blob = in_blob
    last_macro = enc.macros[-1]
    for i in range(idx, -1, -1):
        ip = ips[i]
        dim = 1
        for d in ip.in_shape:
            dim *= d
        if i > 0:
            out = f"dec:{ips[i - 1].name}"
        else:
            out = f"dec:{last_macro.last_conv.name}/flat"
        layers.append(ip_layer(f"dec:{ip.name}", blob, out, dim, lr_scale))
        layers.append(relu(f"dec:{ip.name}/relu", out))
        blob = out
    shape = ips[0].in_shape
    target = f"dec:{last_macro.last_conv.name}"
    r = layer(f"{target}/reshape", "Reshape", [blob], [target])
    r.reshape_param.shape.dim.extend([0] + list(shape))
    layers.append(r)
    return layers, target


def chain(enc, mode, top_macro=None, in_blob=None, lr_scales=None, from_conv=None):
    """One decoding pathway from macro-layer ``top_macro`` (default the
    last) down to the image (SAE/SWWAE-first/all). Returns (layers, outputs
    from the highest to the image)."""
    k = top_macro or len(enc.macros)
    blob = in_blob or (enc.macros[k - 1].output_blob if from_conv is None
                       else enc.layer(from_conv).top)
    layers, outputs = [], []
    for i in range(k, 0, -1):
        macro = enc.macros[i - 1]
        ls, out = mirror_macro(enc, macro, blob, mode, lr_scale=(lr_scales or {}).get(i, 1.0),
                               from_conv=from_conv if i == k else None)
        layers += ls
        outputs.append(out)
        blob = out.blob
    return layers, outputs


def layerwise(enc, mode, lr_scales=None):
    """Independent decoders (SAE/SWWAE-layerwise): decoder k reads the
    encoder's output of macro-layer k and reconstructs its input. Their
    layer names equal the chain's, so step 3 initialises the chain from them."""
    layers, outputs = [], []
    for macro in reversed(enc.macros):
        scale = (lr_scales or {}).get(macro.index, 1.0)
        ls, out = mirror_macro(enc, macro, macro.output_blob, mode, suffix="[2]", lr_scale=scale)
        layers += ls
        outputs.append(out)
    return layers, outputs


def losses(outputs, weights):
    """EuclideanLoss per output whose level has a weight (``weights`` maps
    level -> weight; missing levels get no loss)."""
    return [euclidean_loss(o.target_name, o.blob, o.target, weights[o.level])
            for o in outputs if o.level in weights]


def build(enc, variant, loss_weights, lr_scales=None, wiring=None):
    """Decoder layers + loss layers of a variant. ``wiring`` overrides the
    variant's (step 2 of every variant uses ``layerwise``).
    ``loss_weights``: level -> weight. Returns (layers, outputs)."""
    mode, wire = VARIANTS[variant]
    wire = wiring or wire
    if mode is None:
        return [], []
    if wire == "layerwise":
        layers, outputs = layerwise(enc, mode, lr_scales)
    else:
        layers, outputs = chain(enc, mode, lr_scales=lr_scales)
        if wire == "first":
            outputs = [o for o in outputs if o.level == 0]
    return layers + losses(outputs, loss_weights), outputs


def variant_loss_weights(enc, variant, overrides=None):
    """Level -> weight of the variant's step-4 losses (PAPER_FACTS table)."""
    mode, wire = VARIANTS[variant]
    if mode is None:
        return {}
    if wire == "first":
        w = {0: paper_loss_weight(0)}
    else:
        w = {j: paper_loss_weight(j) for j in range(len(enc.macros))}
    for j, v in (overrides or {}).items():
        if j in w:
            w[j] = v
    return w
