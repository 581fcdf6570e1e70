"""Zhang, Lee & Lee (ICML 2016): a classifier augmented with a mirrored
decoder and reconstruction losses, SAE (fixed unpooling switches) and SWWAE
(known switches), wired first / all / layerwise, trained in the paper's
four-step procedure (Section 4.1), plus the baseline control and the
Section 4.2 inversion nets. Every constant of the paper lives here.

Decoders are named by the authors' contract (PAPER_FACTS 1) so their
released caffemodels load by name: a decoder is a list of mirrored steps,
one per encoder macro-layer (unpool, then one Deconvolution per conv, in
reverse); ``dec:<conv>`` layers write ``dec:<input blob of that conv>``;
losses are ``dec:loss@<target>``; layerwise decoders mark their output
``[2]``. Every decoder is derived from the encoder analysis, never from
hard-coded VGG sizes, so any plain conv/pool/fc chain mirrors the same way."""
import os
from dataclasses import dataclass, field

from ..caffe_io.shapes import conv_geometry
from ..errors import ReconDecError, where
from ..graph import builder
from ..graph import layers as L
from ..graph.builder import IMAGE_TARGET, EncoderPass
from . import register
from .base import Init, Method, Stage, Variant

KNOWN, FIXED = "known", "fixed"
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
# the stages (paper's step numbers) each wiring trains (Section 4.1)
STEPS = {"first": ["2", "3", "4"], "all": ["2", "3", "4"], "layerwise": ["2", "4"], None: ["4"]}
STAGE_NAMES = {"2": "step2-layerwise-decoders", "3": "step3-decoder-finetune", "4": "step4-joint-finetune"}

# Loss weights of SAE/SWWAE-all and -layerwise (PAPER_FACTS table), keyed by
# the reconstructed target: 0 = the image, j = the output of macro-layer j.
# Only VGG16's five are published; a deeper net reuses pool4's weight.
PAPER_LOSS_WEIGHTS = {0: 1e-4, 1: 1e-12, 2: 1e-12, 3: 1e-12, 4: 1e-10}
# Step-2 learning rate of the decoder of macro-layer k (Table S-1, VGG).
PAPER_STEP2_LR = {1: 3e-9, 2: 1e-8, 3: 3e-12, 4: 1e-12, 5: 1e-11}
# step 3's decoder lr_mult is the Table S-1 rate relative to this (see PROVENANCE)
STEP3_LR_REFERENCE = 1e-8

# What the paper publishes is marked in PROVENANCE; everything else is our choice.
_COMMON = dict(lr_policy="fixed", gamma=0.1, stepsize=0, weight_decay=5e-4, snapshot=10000,
               momentum=0.9, random_seed=-1)
STAGE_DEFAULTS = {
    "2": dict(_COMMON, batch=16, iter_size=1, base_lr=1e-8, max_iter=80000),
    "3": dict(_COMMON, batch=16, iter_size=1, base_lr=1e-4, max_iter=40000),
    "4": dict(_COMMON, batch=16, iter_size=4, base_lr=1e-4, lr_policy="step", stepsize=160000,
              max_iter=320000),
    "recon": dict(_COMMON, batch=16, iter_size=1, base_lr=1e-8, max_iter=80000),
}

PROVENANCE = """\
| setting | value | source |
|---|---|---|
| momentum, all steps | 0.9 | published (Section 4.1) |
| step-2 mini-batch | 16 | published |
| step-2 loss weights | 1 for every reconstruction loss | published |
| step-2 per-macro-layer learning rates | 3e-9, 1e-8, 3e-12, 1e-12, 1e-11 (macro-layers 1-5) | published (Table S-1, VGG16); other nets reuse them by macro-layer index: **not published, our choice** |
| step-2 base_lr | 1e-8; decoder k gets lr_mult = rate_k / base_lr (biases x2) | **not published, our choice** (only the products matter) |
| step-2 iterations | 80000 (about one ImageNet epoch at batch 16), fixed LR | **not published, our choice** ("about one epoch", no annealing) |
| step-3 base_lr, lr_mult | 1e-4; decoder k lr_mult = rate_k / 1e-8, so LR x image-loss weight (1e-4) equals step 2's rate | **not published, our choice** |
| step-3 batch, iterations | 16, 40000, fixed LR | **not published, our choice** |
| step-4 effective batch | 64 | published; written as batch 16 x iter_size 4 (VGG16 + decoder at 64 does not fit one GPU): **our choice** |
| step-4 base_lr, schedule | 1e-4, step policy x0.1 every 160000 iterations | **not published, our choice** (VGG's own final LR was 1e-4) |
| step-4 iterations | 320000 (about 16 epochs at 64) | **not published, our choice** (SWWAE-all reached Table 1 in ~16 epochs) |
| weight decay, all steps | 5e-4 (VGG's); decoder biases and frozen layers decay_mult 0 | **not published, our choice** |
| loss weights (step 3/4) | image 1e-4, pool1-3 1e-12, pool4 1e-10 | published (VGG16); deeper nets reuse pool4's: **our choice** |
| solver random_seed | unset (Caffe seeds from the clock); `--random-seed` makes fillers and dropout reproducible | our option |
| inversion nets (Section 4.2) | image loss weight 1, base_lr 1e-8, batch 16, 80000 iterations | **not published, our choice** |
"""


def paper_loss_weight(j):
    return PAPER_LOSS_WEIGHTS.get(j, PAPER_LOSS_WEIGHTS[4])


def paper_step2_lr(k):
    return PAPER_STEP2_LR.get(k, PAPER_STEP2_LR[5])


@dataclass
class Options:
    step2_lr: dict = field(default_factory=dict)      # macro-layer k -> rate (Table S-1 override)
    loss_weights: dict = field(default_factory=dict)  # level j -> weight (0 = image)
    recon: bool = True                 # the Section 4.2 inversion nets
    recon_points: str = "auto"         # auto | macro | layer
    recon_lr: dict = field(default_factory=dict)      # "VARIANT/layerK" or "layerK" -> base_lr
    recon_init: dict = field(default_factory=dict)    # "sae-first"/"swwae-first" -> decoder caffemodel


# --------------------------------------------------------------------------
# decoders
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


def _params(lr_scale):
    return (L.WEIGHT.scaled(lr_scale), L.BIAS.scaled(lr_scale))


def _conv(name, type_, bottom, top, num_output, kernel, stride=(1, 1), pad=(0, 0), lr_scale=1.0):
    return L.conv_layer(name, type_, bottom, top, num_output, kernel, stride, pad,
                        params=_params(lr_scale), std=DECONV_STD)


def _unpool(macro, in_blob, mode):
    pool = macro.pool
    return L.unpooling(f"dec:{pool.name.rsplit('/', 1)[0]}/unpool", in_blob, pool.param.pooling_param,
                       pool.in_shape, pool.out_shape, pool.bottom,
                       switches=pool.param.top[1] if mode == KNOWN else None)


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
        layers = [_conv(name, "Deconvolution", in_blob, out_blob, cin, k, (1, 1), p, lr_scale)]
        if not target_is_image:
            layers.append(L.relu(f"{name}/relu", out_blob))
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
        _conv(pre, "Convolution", in_blob, pre, n, (5, 5), (1, 1), (2, 2), lr_scale),
        L.relu(f"{pre}/relu", pre),
        _conv(body, "Deconvolution", pre, body, max(1, n // 2), k, s, p, lr_scale),
        L.relu(f"{body}/relu", body),
        _conv(f"{name}-post", "Deconvolution", body, out_blob, cin, (5, 5), (1, 1), (2, 2), lr_scale),
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
        unpool = _unpool(macro, blob, mode)
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
    idx = [l.name for l in ips].index(start_fc)
    layers = []
    blob = in_blob
    last_macro = enc.macros[-1]
    for i in range(idx, -1, -1):
        ip = ips[i]
        dim = 1
        for d in ip.in_shape:
            dim *= d
        out = f"dec:{ips[i - 1].name}" if i > 0 else f"dec:{last_macro.last_conv.name}/flat"
        layers.append(L.ip_layer(f"dec:{ip.name}", blob, out, dim, params=_params(lr_scale), std=DECONV_STD))
        layers.append(L.relu(f"dec:{ip.name}/relu", out))
        blob = out
    target = f"dec:{last_macro.last_conv.name}"
    layers.append(L.reshape(f"{target}/reshape", blob, target, [0] + list(ips[0].in_shape)))
    return layers, target


def chain(enc, mode, top_macro=None, in_blob=None, lr_scales=None, from_conv=None):
    """One decoding pathway from macro-layer ``top_macro`` (default the
    last) down to the image (SAE/SWWAE-first/all). Returns (layers, outputs
    from the highest to the image)."""
    k = top_macro or len(enc.macros)
    blob = in_blob or (enc.macros[k - 1].output_blob if from_conv is None else enc.layer(from_conv).top)
    layers, outputs = [], []
    for i in range(k, 0, -1):
        ls, out = mirror_macro(enc, enc.macros[i - 1], blob, mode, lr_scale=(lr_scales or {}).get(i, 1.0),
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
        ls, out = mirror_macro(enc, macro, macro.output_blob, mode, suffix="[2]",
                               lr_scale=(lr_scales or {}).get(macro.index, 1.0))
        layers += ls
        outputs.append(out)
    return layers, outputs


def loss_name(target_name):
    return f"dec:loss@{target_name}"


def losses(outputs, weights):
    """EuclideanLoss per output whose level has a weight (``weights`` maps
    level -> weight; missing levels get no loss)."""
    return [L.euclidean_loss(loss_name(o.target_name), o.blob, o.target, weights[o.level])
            for o in outputs if o.level in weights]


def decoder(enc, variant, loss_weights, lr_scales=None, wiring=None):
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
    """Level -> weight of the variant's step-3/4 losses (PAPER_FACTS table)."""
    mode, wire = VARIANTS[variant]
    if mode is None:
        return {}
    levels = [0] if wire == "first" else range(len(enc.macros))
    w = {j: paper_loss_weight(j) for j in levels}
    for j, v in (overrides or {}).items():
        if j in w:
            w[j] = v
    return w


def step2_lr_scales(enc, base_lr, rates=None):
    """lr_mult factor of each macro-layer's decoder: its Table S-1 rate (or
    ``rates[k]``) divided by the solver's base_lr."""
    if not base_lr:
        raise ReconDecError("--base-lr: step 2's base_lr must not be 0 (decoder lr_mults are rate / base_lr)")
    rates = rates or {}
    return {m.index: rates.get(m.index, paper_step2_lr(m.index)) / base_lr for m in enc.macros}


def _param_names(net, decoder_side):
    types = ("Convolution", "InnerProduct", "Deconvolution", "BatchNorm", "Scale")
    return [l.name for l in net.layer if l.type in types and l.name.startswith("dec:") == decoder_side]


# --------------------------------------------------------------------------
# the training stages of a variant (Section 4.1)
def _stage_net(ctx, variant, step, settings):
    enc, mo = ctx.enc, ctx.method_options
    mode, _ = VARIANTS[variant]
    dec_layers = []
    if mode is not None:
        if step == "2":
            weights = {j: 1.0 for j in range(len(enc.macros))}  # published: all 1 in step 2
            scales = step2_lr_scales(enc, settings["base_lr"], mo.step2_lr)
            dec_layers, _ = decoder(enc, variant, weights, scales, wiring="layerwise")
        else:
            weights = variant_loss_weights(enc, variant, mo.loss_weights)
            scales = step2_lr_scales(enc, STEP3_LR_REFERENCE, mo.step2_lr) if step == "3" else None
            dec_layers, _ = decoder(enc, variant, weights, scales)
    frozen = step in ("2", "3")
    layers = ctx.data_layers(settings["batch"])
    if builder.uses_image_target(dec_layers):
        layers.append(builder.scaled_data())
    layers += EncoderPass(enc, freeze=lambda layer: frozen, switches=(mode == KNOWN)).layers
    layers += dec_layers
    layers += ctx.classifier_heads()
    return builder.net(f"{variant}-step{step}", layers)


def _deploy_net(ctx, variant):
    """The step-4 net for inference: classifier + decoders, no data or
    losses; layer names equal the authors' so their caffemodels load."""
    mode, _ = VARIANTS[variant]
    dec_layers = decoder(ctx.enc, variant, {})[0] if mode else []
    layers = [ctx.input_layer()]
    layers += EncoderPass(ctx.enc, switches=(mode == KNOWN)).layers
    layers += dec_layers
    layers.append(builder.softmax(ctx.enc.output_blob))
    return builder.net(f"{variant}-deploy", layers)


def _describe_stage(variant, step):
    mode, wire = VARIANTS[variant]
    kind = "SWWAE" if mode == KNOWN else "SAE"
    if step == "2":
        return f"{kind}-layerwise decoders, encoder frozen (lr_mult 0), loss weights 1, Table S-1 rates"
    if step == "3":
        return f"{kind}-{wire} decoder initialised from step 2 and finetuned, encoder frozen"
    if wire is None:
        return "baseline: the classifier finetuned without decoder"
    return f"{kind}-{wire}: encoder and decoder finetuned jointly, paper loss weights"


def _variant(ctx, variant):
    _, wire = VARIANTS[variant]
    enc_names = [l.name for l in ctx.enc.param_layers]
    pretrained = [Init("@pretrained", enc_names)] if ctx.pretrained else []
    stages = []
    for step in STEPS[wire]:
        settings = ctx.settings(step)
        net = _stage_net(ctx, variant, step, settings)
        dec_names = _param_names(net, True)
        if step == "2" or wire is None:
            init, requires = list(pretrained), []
        elif step == "3":
            init, requires = pretrained + [Init("@stage:2", dec_names)], ["2"]
        else:  # step 4 after 3 (first/all) or 2 (layerwise)
            prev = "3" if "3" in STEPS[wire] else "2"
            init, requires = [Init(f"@stage:{prev}", enc_names + dec_names)], [prev]
        stages.append(Stage(id=step, name=STAGE_NAMES[step], description=_describe_stage(variant, step),
                            net=net, settings=settings, dir=f"step{step}", snapshot_prefix=f"snapshots/step{step}",
                            init=init, requires=requires))
    return Variant(variant, stages, _deploy_net(ctx, variant))


# --------------------------------------------------------------------------
# inversion nets (Section 4.2): a SAE/SWWAE-first decoder starting from one
# encoder layer, trained with the encoder frozen and the image loss only.
# VGG16 ("macro" points): layers 1-5 = pool1..pool5 with fixed (sae-first)
# and known (swwae-first) switches, layers 6-8 = fc6..fc8 with known
# switches. AlexNet ("layer" points): layers 1-8 = conv1 (pool1), conv2
# (pool2), conv3, conv4, conv5 (pool5), fc6, fc7, fc8 with known switches.
# The authors publish theirs as <net>/recon/<variant>/layer<k>.
INVERSION_VARIANTS = (("sae-first", FIXED), ("swwae-first", KNOWN))


def recon_points(enc, opts):
    if opts.recon_points != "auto":
        return opts.recon_points
    stride = conv_geometry(enc.macros[0].convs[0].param.convolution_param)[1]
    # AlexNet-style nets (strided conv1) are inverted after every layer, as in Section 4.2
    return "layer" if stride != (1, 1) else "macro"


def start_points(enc, mode):
    """[(kind, macro, layer name)]: kind "macro" decodes from a macro-layer's
    output (after its pool), "conv" from inside a macro-layer, "fc" from an
    inner product's output."""
    pts = []
    for m in enc.macros:
        for c in (m.convs if mode == "layer" else [m.last_conv]):
            pts.append(("macro" if c is m.last_conv else "conv", m, c.name))
    for ip in enc.fc_layers:
        pts.append(("fc", None, ip.name))
    return pts


def decoder_from(enc, point, unpool):
    """(decoder layers, image blob, encoder blob it starts from)."""
    kind, macro, name = point
    if kind == "macro":
        layers, outs = chain(enc, unpool, top_macro=macro.index)
        return layers, outs[-1].blob, macro.output_blob
    if kind == "conv":
        layers, outs = chain(enc, unpool, top_macro=macro.index, from_conv=name)
        return layers, outs[-1].blob, enc.layer(name).top
    start = enc.layer(name).top
    fc_layers, blob = mirror_fc(enc, name, start)
    layers, outs = chain(enc, unpool, in_blob=blob)
    return fc_layers + layers, outs[-1].blob, start


def _inversion_net(ctx, point, unpool, settings=None):
    """The train net (``settings`` given) or the deploy net of one inversion net."""
    enc = ctx.enc
    layers, image, start = decoder_from(enc, point, unpool)
    if image != "dec:data":
        raise ReconDecError(f"{enc.path}: the decoder from {point[2]} does not end at the image")
    enc_pass = EncoderPass(enc, freeze=builder.frozen, upto=start, switches=(unpool == KNOWN), dropout=False)
    name = f"recon-{'swwae' if unpool == KNOWN else 'sae'}-first-from-{point[2]}"
    if settings is None:
        return builder.net(name, [ctx.input_layer()] + enc_pass.layers + layers)
    net = ctx.data_layers(settings["batch"]) + [builder.scaled_data()] + enc_pass.layers + layers
    net.append(L.euclidean_loss(loss_name(IMAGE_TARGET), image, IMAGE_TARGET, 1.0))
    net.append(L.silence("label/silence", ["label"]))  # the label is not used
    return builder.net(name, net)


def _inversion_variants(ctx):
    mo = ctx.method_options
    mode = recon_points(ctx.enc, mo)
    out = []
    for variant, unpool in INVERSION_VARIANTS:
        for k, point in enumerate(start_points(ctx.enc, mode), 1):
            if unpool == FIXED and (mode == "layer" or point[0] == "fc"):
                continue  # fixed switches: VGG's conv macro-layers only (as in Section 4.2)
            d = f"{variant}/layer{k}"
            settings = ctx.settings("recon")
            for key in (d, f"layer{k}"):
                if key in mo.recon_lr:
                    settings["base_lr"] = mo.recon_lr[key]
                    break
            net = _inversion_net(ctx, point, unpool, settings)
            enc_names = _param_names(net, False)
            dec_names = [l.name for l in net.layer if l.name.startswith("dec:") and len(l.param)]
            init = [Init("@pretrained", enc_names)] if ctx.pretrained else []
            if variant in mo.recon_init:
                init.append(Init(os.path.abspath(mo.recon_init[variant]), dec_names))
            stage = Stage(id="recon", name="recon-decoder",
                          description=f"{variant} decoder from {point[2]}, encoder frozen (Section 4.2)",
                          net=net, settings=settings, snapshot_prefix="snapshots/recon", init=init,
                          extra={"decoder_layers": dec_names})
            out.append(Variant(f"recon/{d}", [stage], _inversion_net(ctx, point, unpool),
                               description=f"{variant} from {point[2]}"))
    return out


# --------------------------------------------------------------------------
def _pairs(values, flag, key=int):
    out = {}
    for v in values or []:
        try:
            k, x = v.split("=", 1)
            out[key(k.strip())] = float(x)
        except ValueError:
            raise ReconDecError(f"{flag}: expected K=VALUE, got {v!r}") from None
    return out


class SWWAE(Method):
    name = "swwae"
    help = ("Zhang, Lee & Lee (ICML 2016): SAE/SWWAE decoders (first, all, layerwise), the baseline, "
            "the four-step training and the Section 4.2 inversion nets")
    variants = tuple(VARIANTS)
    stage_defaults = STAGE_DEFAULTS
    provenance = PROVENANCE

    def add_arguments(self, g):
        g.add_argument("--step2-lr", action="append",
                       help="K=RATE: step-2 rate of macro-layer K's decoder (Table S-1)")
        g.add_argument("--loss-weight", action="append",
                       help="J=W: step-3/4 weight of the loss on macro-layer J's output (0 = image)")
        g.add_argument("--no-recon", action="store_true", default=None,
                       help="skip the Section 4.2 inversion nets")
        g.add_argument("--recon-points", choices=["auto", "macro", "layer"],
                       help="inversion nets after every macro-layer or every conv/fc "
                            "(default auto: layer for a strided conv1)")
        g.add_argument("--recon-lr", action="append",
                       help="[VARIANT/]layerK=RATE: base_lr of one inversion net (default: recon's)")
        g.add_argument("--recon-init", action="append",
                       help="VARIANT=FILE: initialise the decoders of VARIANT's inversion nets "
                            "(sae-first or swwae-first) from FILE, e.g. a step-2 caffemodel")

    def options(self, args=None):
        if args is None:
            return Options()
        init = {}
        for v in args.recon_init or []:
            variant, _, path = v.partition("=")
            if variant not in dict(INVERSION_VARIANTS) or not path:
                raise ReconDecError(f"--recon-init: expected sae-first=FILE or swwae-first=FILE, got {v!r}")
            init[variant] = path
        return Options(step2_lr=_pairs(args.step2_lr, "--step2-lr"),
                       loss_weights=_pairs(args.loss_weight, "--loss-weight"),
                       recon=not args.no_recon, recon_points=args.recon_points or "auto",
                       recon_lr=_pairs(args.recon_lr, "--recon-lr", key=str), recon_init=init)

    def build(self, ctx, variants):
        for variant, path in ctx.method_options.recon_init.items():
            if not os.path.isfile(path):
                raise ReconDecError(f"{path}: --recon-init {variant}: no such weights file")
        out = [_variant(ctx, v) for v in variants]
        if ctx.method_options.recon:
            out += _inversion_variants(ctx)
        return out

    def readme(self, ctx, variants):
        lines = []
        if not ctx.pretrained:
            lines += ["No `--weights` was given: the encoder starts from its fillers "
                      "(msra); frozen-encoder stages then make little sense.", ""]
        inversion = [v for v in variants if v.name.startswith("recon/")]
        if inversion:
            lines += ["## Inversion nets (Section 4.2)", "",
                      "Decoder trained with the encoder frozen, image loss only (weight 1); "
                      "`recon-dec train recon/<variant>/layer<k>/plan.json --all` trains one.", ""]
        return lines


register(SWWAE())
