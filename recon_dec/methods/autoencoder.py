"""The classic autoencoder family (../shared/papers/003, PAPER_FACTS 3) for
any MLP or conv encoder given as a classifier's deploy prototxt: the encoder
is the classifier up to its code layer (by default the last parameterised
layer before the output layer), the decoder mirrors it layer by layer, and
the learned encoder then initialises the classifier, finetuned on N labels.

Composable options, each defaulting to the textbook value:
- tied weights (decoder = W^T: an InnerProduct with ``transpose: true`` or a
  Deconvolution sharing the encoder layer's weight blob by parameter name;
  biases separate) or untied;
- reconstruction loss: cross-entropy on sigmoid outputs (Caffe's
  SigmoidCrossEntropyLoss on the logits) or mean squared error; inputs are
  scaled to [0, 1] (``--scale`` defaults to 1/255 for this method);
- denoising: additive Gaussian noise (sigma) or masking noise (each input
  zeroed with probability p, no rescaling), TRAIN only, target = clean input;
- sparse: beta * sum_j KL(rho || mean activation of unit j) on the code layer
  (sigmoid only);
- the code width (under/over-complete);
- variants: ``ae`` (the whole autoencoder trained at once, then finetuned),
  ``stacked`` (greedy: layer k on the frozen codes of layers < k with its own
  decoder, then the unrolled encoder/decoder, then finetuning), ``context``
  (a patch removed from the input, only the patch reconstructed, then
  finetuning) and ``supervised`` (the control: the same classifier, labels
  and finetuning schedule, from its fillers).

Decoder layers are ``dec:<encoder layer>`` writing ``dec:<what that layer
read>``; losses ``dec:loss@<target>``. Every stage names exactly the layers
it initialises (plan.json ``init``)."""
import copy
import dataclasses
from dataclasses import dataclass

from ..caffe_io.shapes import conv_geometry
from ..errors import ReconDecError, where
from ..graph import builder
from ..graph import layers as L
from ..graph.builder import EncoderPass
from ..graph.data_layers import data_layers
from . import register
from .base import Init, Method, Stage, Variant

ACTIVATIONS = ("ReLU", "Sigmoid", "TanH")
ENCODER_TYPES = {"Convolution", "InnerProduct", "Pooling", "Dropout"} | set(ACTIVATIONS)
LOSSES = ("ce", "mse")
NOISE = ("none", "gaussian", "masking")
INPUT_SCALE = 1.0 / 255             # inputs in [0, 1]
DECODER_STD = 0.01                  # gaussian std of untied decoder weights (our choice)
# the solver of Caffe's examples/mnist/mnist_autoencoder_solver.prototxt for
# the pretraining stages; finetuning is our choice (documented in PROVENANCE)
_CAFFE_EXAMPLE = dict(batch=100, iter_size=1, base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=10000,
                      max_iter=65000, weight_decay=5e-4, snapshot=10000, momentum=0.9, random_seed=-1)
STAGE_DEFAULTS = {
    "pretrain": dict(_CAFFE_EXAMPLE),
    "layer": dict(_CAFFE_EXAMPLE, max_iter=20000),     # each greedy layer (all "layerK" stages)
    "unroll": dict(_CAFFE_EXAMPLE),
    "finetune": dict(_CAFFE_EXAMPLE, base_lr=0.01, lr_policy="fixed", max_iter=5000),
}
PROVENANCE = """\
| setting | value | source |
|---|---|---|
| pretraining solver (pretrain, each layerK, unroll) | SGD, base_lr 0.01, momentum 0.9, weight decay 5e-4, x0.1 every 10000 iterations, batch 100 | Caffe's `examples/mnist/mnist_autoencoder_solver.prototxt` |
| iterations | pretrain / unroll 65000 (Caffe's example), each greedy layer 20000 | the example; per layer: **our choice** |
| finetuning | base_lr 0.01 fixed, 5000 iterations, batch 100 | **our choice** |
| parameter multipliers | weights lr 1 decay 1, biases lr 1 decay 0 | Caffe's example |
| untied decoder fillers | those of the mirrored encoder layer; gaussian std 0.01 and zero biases when it has none | **our choice** (Caffe's example uses one filler on both sides; tied: the encoder's own weights) |
| reconstruction loss | cross-entropy on sigmoid outputs (logits into SigmoidCrossEntropyLoss) | the lecture's choice for inputs in [0, 1]; Caffe's example |
| denoising noise | gaussian sigma 0.3 / masking p 0.25 when chosen | **our choice** (`--noise-level`) |
| sparsity | rho 0.05, beta 0.1 on a sigmoid code | **our choice** (`--sparsity`, `--sparsity-weight`) |
| context encoder | centre patch of half the input side, random position in TRAIN | **our choice** (`--patch-size`, `--patch-mode`) |
"""
PARAMS = (L.WEIGHT, L.Param(1.0, 0.0))   # Caffe's example: biases at the base rate


@dataclass
class Options:
    tied: bool = True
    loss: str = "ce"
    noise: str = "none"
    noise_level: float = None           # sigma (gaussian) or p (masking); default by kind
    sparsity: float = None              # rho; None: no sparsity penalty
    sparsity_weight: float = 0.1        # beta
    code_layer: str = None              # default: the last param layer before the output layer
    code_width: int = None              # override the code layer's num_output
    patch_size: int = None              # context encoder; default half the input side
    patch_mode: str = "RANDOM"


# --------------------------------------------------------------------------
@dataclass
class Unit:
    """One encoder step the decoder mirrors: a conv/fc layer, its activation
    (or None), the max pool after it (or None), and the encoder layer whose
    output it reads (None: the image)."""
    param: object
    reads: object = None
    act: object = None
    pool: object = None

    @property
    def last(self):
        """The layer that writes this unit's output."""
        return self.pool or self.act or self.param


def units(enc, code):
    """The encoder's steps up to and including ``code`` (a layer name)."""
    out, previous = [], None
    for e in enc.layers:
        if e.type in ("Convolution", "InnerProduct"):
            if out and out[-1].param.name == code:
                break
            out.append(Unit(e, reads=previous))
        elif out and e.type in ACTIVATIONS:
            out[-1].act = e
        elif out and e.type == "Pooling":
            out[-1].pool = e
        if e.type != "Dropout":
            previous = e
    if not out or out[-1].param.name != code:
        raise ReconDecError(where(enc.path, code) + "--code-layer: not a convolution or inner product of the net")
    return out


def default_code(enc):
    params = [e.name for e in enc.layers if e.type in ("Convolution", "InnerProduct")]
    if len(params) < 2:
        raise ReconDecError(f"{enc.path}: an autoencoder needs a code layer before the output layer "
                            "(the net has one parameterised layer)")
    return params[-2]


def _weights(mo, u):
    """Decoder ParamSpecs: the encoder layer's own weight blob when tied."""
    return (L.Param(1.0, 1.0, f"{u.param.name}#0"), PARAMS[1]) if mo.tied else PARAMS


def mirror(enc, mo, u, in_blob, out_blob, act=None):
    """dec:<layer> of one unit (unpooling first if the unit pools), then the
    activation ``act`` (an encoder activation layer) if given."""
    p, name = u.param, f"dec:{u.param.name}"
    out, blob = [], in_blob
    if u.pool is not None:
        pool, pp = u.pool, u.pool.param.pooling_param
        if pp.pool != pp.MAX:
            raise ReconDecError(where(enc.path, pool.source_name) + "only max pooling is mirrored (by unpooling)")
        l = L.unpooling(f"dec:{pool.name}/unpool", blob, pp, pool.in_shape, pool.out_shape, pool.bottom,
                        switches=pool.param.top[1])
        out.append(l)
        blob = l.top[0]
    if p.type == "InnerProduct":
        dim = 1
        for d in p.in_shape:
            dim *= d
        flat = out_blob if len(p.in_shape) == 1 else f"{name}/flat"
        out.append(_fill_like(L.ip_layer(name, blob, flat, dim, params=_weights(mo, u), std=DECODER_STD,
                                         transpose=mo.tied), p.param.inner_product_param, mo))
        if flat != out_blob:
            out.append(L.reshape(f"{name}/reshape", flat, out_blob, [0] + list(p.in_shape)))
    else:
        cp = p.param.convolution_param
        k, s, pad, d = conv_geometry(cp)
        if d != (1, 1) or cp.group > 1:
            raise ReconDecError(where(enc.path, p.source_name) + "cannot mirror a dilated or grouped convolution")
        got = ((p.out_shape[1] - 1) * s[0] + k[0] - 2 * pad[0], (p.out_shape[2] - 1) * s[1] + k[1] - 2 * pad[1])
        if got != tuple(p.in_shape[1:]):
            raise ReconDecError(where(enc.path, p.source_name) + f"cannot mirror: a deconvolution would give "
                                f"{got[0]}x{got[1]}, the convolution reads {p.in_shape[1]}x{p.in_shape[2]}")
        out.append(_fill_like(L.conv_layer(name, "Deconvolution", blob, out_blob, p.in_shape[0], k, s, pad,
                                           params=_weights(mo, u), std=DECODER_STD), cp, mo))
    if act is not None:
        a = copy.deepcopy(act.param)
        a.name = f"{name}/{act.type.lower()}"
        del a.bottom[:], a.top[:]
        a.bottom.append(out_blob)
        a.top.append(out_blob)
        out.append(a)
    return out


def _fill_like(layer, encoder_param, mo):
    """An untied decoder layer's fillers are those of the layer it mirrors
    (Caffe's example: gaussian std 1, sparse 15 on both sides), when given."""
    if not mo.tied and encoder_param.HasField("weight_filler"):
        p = layer.inner_product_param if layer.type == "InnerProduct" else layer.convolution_param
        p.weight_filler.CopyFrom(encoder_param.weight_filler)
        if encoder_param.HasField("bias_filler"):
            p.bias_filler.CopyFrom(encoder_param.bias_filler)
    return layer


def _below(us, u):
    i = us.index(u)
    return us[i - 1] if i else None


def _ce_target(mo, below):
    """Cross-entropy (on logits) when asked for and the target lies in [0, 1]:
    the image, or a sigmoid unit's output."""
    return mo.loss == "ce" and (below is None or (below.act is not None and below.act.type == "Sigmoid"))


def decoder(enc, mo, us, chain, blob):
    """Mirrors ``chain`` (units, top first) starting from ``blob``; every
    intermediate output gets the activation of the unit below, the last one
    too unless it feeds a cross-entropy loss (logits). Returns (layers, the
    last output blob, the unit below the last one or None)."""
    layers = []
    for i, u in enumerate(chain):
        below = _below(us, u)
        out = "dec:data" if below is None else f"dec:{u.reads.top}"
        last = i == len(chain) - 1
        act = below.act if below is not None and (not last or not _ce_target(mo, below)) else None
        layers += mirror(enc, mo, u, blob, out, act)
        blob = out
    return layers, blob, _below(us, chain[-1])


class Autoencoder(Method):
    name = "autoencoder"
    help = ("the classic autoencoder family (tied/untied, denoising, sparse, stacked, context encoder) "
            "pretraining an MLP or conv encoder, then finetuned on N labels")
    variants = ("ae", "stacked", "context", "supervised")
    stage_defaults = STAGE_DEFAULTS
    provenance = PROVENANCE
    encoder_types = ENCODER_TYPES
    needs_convolution = False
    # inputs in [0, 1], whole images, no mirroring (as Caffe's example; a crop
    # or mirror would also draw from Caffe's RNG before the fillers do)
    data_defaults = {"scale": INPUT_SCALE, "crop": 0, "mirror": False}

    def add_arguments(self, g):
        g.add_argument("--untied", action="store_true", default=None,
                       help="decoder weights of its own (default tied: W^T)")
        g.add_argument("--loss", choices=LOSSES, help="reconstruction loss: ce (sigmoid cross-entropy, default) or mse")
        g.add_argument("--noise", choices=NOISE, help="denoising: gaussian or masking noise on the input (default none)")
        g.add_argument("--noise-level", type=float, help="sigma of gaussian noise (0.3) or masking probability (0.25)")
        g.add_argument("--sparsity", type=float, help="RHO: KL sparsity penalty towards mean activation RHO on the code")
        g.add_argument("--sparsity-weight", type=float, help="BETA, the KL penalty's weight (default 0.1)")
        g.add_argument("--code-layer", help="the code layer (default the last conv/fc before the output layer)")
        g.add_argument("--code-width", type=int, help="num_output of the code layer (under/over-complete codes)")
        g.add_argument("--patch-size", type=int, help="context encoder: side of the removed patch (default half)")
        g.add_argument("--patch-mode", choices=["RANDOM", "CENTER"], help="context encoder: patch position in TRAIN")

    def options(self, args=None):
        if args is None:
            return Options()
        return check_options(Options(
            tied=not args.untied, loss=args.loss or "ce", noise=args.noise or "none", noise_level=args.noise_level,
            sparsity=args.sparsity, sparsity_weight=0.1 if args.sparsity_weight is None else args.sparsity_weight,
            code_layer=args.code_layer, code_width=args.code_width,
            patch_size=args.patch_size, patch_mode=args.patch_mode or "RANDOM"))

    def prepare(self, enc, mo):
        """The encoder with the code width applied (shapes recomputed)."""
        if mo.code_width is None:
            return enc
        from ..graph.encoder import analyse
        code = mo.code_layer or default_code(enc)
        layers = [copy.deepcopy(e.param) for e in enc.layers]
        for l in layers:
            if l.name == code:
                (l.inner_product_param if l.type == "InnerProduct" else l.convolution_param).num_output = mo.code_width
        net = builder.net("encoder", [builder.input_layer(enc, enc.input_shape[0])] + layers)
        return analyse(net, enc.path, enc.input_shape, types=self.encoder_types, require_conv=False)

    def build(self, ctx, variants):
        mo = check_options(ctx.method_options)
        ctx = dataclasses.replace(ctx, enc=self.prepare(ctx.enc, mo))
        code = mo.code_layer or default_code(ctx.enc)
        us = units(ctx.enc, code)
        if mo.sparsity is not None and (us[-1].act is None or us[-1].act.type != "Sigmoid"):
            raise ReconDecError(where(ctx.enc.path, code) + "--sparsity needs a sigmoid code layer (the KL "
                                "penalty is on mean activations in (0, 1))")
        return [self._variant(ctx, mo, us, v) for v in variants]

    # ----------------------------------------------------------------------
    def _variant(self, ctx, mo, us, variant):
        names = [u.param.name for u in us]
        decs = [f"dec:{n}" for n in names]
        stages, prev = [], None
        if variant in ("ae", "context"):
            stages.append(self._pretrain(ctx, mo, us, "pretrain", len(us), [], context=variant == "context"))
            prev = "pretrain"
        elif variant == "stacked":
            for k in range(1, len(us) + 1):
                init = [Init(f"@stage:layer{k - 1}", names[:k - 1])] if k > 1 else []
                stages.append(self._pretrain(ctx, mo, us, f"layer{k}", k, init, greedy=True))
            init = [Init(f"@stage:layer{len(us)}", names)]
            init += [Init(f"@stage:layer{k}", [decs[k - 1]]) for k in range(1, len(us) + 1)]
            stages.append(self._pretrain(ctx, mo, us, "unroll", len(us), init))
            prev = "unroll"
        init = [Init(f"@stage:{prev}", names)] if prev else []
        stages.append(self._finetune(ctx, mo, variant, init, [prev] if prev else []))
        return Variant(variant, stages, self._deploy(ctx, mo, us, variant))

    def _noise(self, mo, at):
        """A hook adding the input noise after encoder layer ``at`` (None: on
        the image), in TRAIN only (the layers are no-ops in TEST)."""
        if mo.noise == "none":
            return None

        def hook(e, blob):
            if e is not at:
                return None
            name = f"{blob}/noise"
            if mo.noise == "gaussian":
                l = L.gaussian_noise(name, blob, name, mo.noise_level)
            else:
                l = L.masking_noise(name, blob, name, mo.noise_level)
            return [l], name
        return hook

    def _pretrain(self, ctx, mo, us, sid, k, init, greedy=False, context=False):
        """A reconstruction stage through units 1..k: greedy (unit k's own
        decoder reconstructs what unit k reads, units < k frozen) or the whole
        chain back to the image."""
        enc = ctx.enc
        settings = ctx.settings("layer" if greedy else sid)
        top = us[k - 1]
        frozen = {u.param.name for u in us[:k - 1]} if greedy else set()
        layers = ctx.data_layers(settings["batch"]) + [L.silence("label/silence", ["label"])]
        input_blob = "data"
        if context:
            size = mo.patch_size or enc.input_shape[2] // 2
            if size > min(enc.input_shape[2:]):
                raise ReconDecError(f"{enc.path}: --patch-size {size} is larger than the "
                                    f"{enc.input_shape[2]}x{enc.input_shape[3]} input")
            pr = L.layer("data/patch-removed", "PatchRemoval", ["data"], ["data/patch-removed", "data/patch-mask"])
            pr.patch_removal_param.size = size
            pr.patch_removal_param.mode = getattr(pr.patch_removal_param, mo.patch_mode)
            layers.append(pr)
            input_blob = "data/patch-removed"
        chain = [top] if greedy else list(reversed(us[:k]))
        p = EncoderPass(enc, freeze=lambda e: e.name in frozen, input_blob=input_blob, upto=top.last.top,
                        share="" if mo.tied else None, hook=self._noise(mo, top.reads if greedy else None),
                        dropout=False, switches={u.pool.name for u in chain if u.pool}, bias=PARAMS[1])
        layers += p.layers
        if mo.sparsity is not None and k == len(us):
            kl = L.layer("dec:loss@sparsity", "KLSparsityLoss", [p.output[us[-1].act.name]], ["dec:loss@sparsity"])
            kl.kl_sparsity_param.rho = mo.sparsity
            kl.loss_weight.append(mo.sparsity_weight)
            layers.append(kl)
        dec, blob, below = decoder(enc, mo, us, chain, p.blob(top.last.top))
        layers += dec
        target = "data" if below is None else p.output[chain[-1].reads.name]
        loss = f"dec:loss@{'data' if below is None else chain[-1].reads.top}"
        if context:
            l = L.layer(loss, "MaskedEuclideanLoss", [blob, target, "data/patch-mask"], [loss])
        elif _ce_target(mo, below):
            l = L.layer(loss, "SigmoidCrossEntropyLoss", [blob, target], [loss])
        else:
            l = L.layer(loss, "EuclideanLoss", [blob, target], [loss])
        l.loss_weight.append(1.0)
        layers.append(l)
        what = f"layer {k} on the frozen codes of layers < {k}" if greedy else "the whole autoencoder"
        return Stage(sid, sid, what + (", context encoder" if context else ""), builder.net(sid, layers),
                     settings, dir=sid, init=init, requires=[init[0].weights.split(":")[1]] if init else [])

    def _finetune(self, ctx, mo, variant, init, requires):
        settings = ctx.settings("finetune")
        spec = ctx.options.data
        if spec.labeled_source:
            spec = dataclasses.replace(spec, train_source=spec.labeled_source)
        p = EncoderPass(ctx.enc, switches=False, bias=PARAMS[1])
        layers = data_layers(spec, ctx.enc.input_shape, settings["batch"]) + p.layers + ctx.classifier_heads()
        what = "the supervised control, from fillers" if variant == "supervised" else "from the pretrained encoder"
        return Stage("finetune", "finetune", f"classifier on the labels, {what}", builder.net("finetune", layers),
                     settings, dir="finetune", init=init, requires=requires)

    def _deploy(self, ctx, mo, us, variant):
        """Classifier + (but for the control) the decoder from the code: the
        reconstruction ``dec:data/out`` in input units."""
        p = EncoderPass(ctx.enc, share="" if mo.tied else None, switches=variant != "supervised" and {u.pool.name for u in us if u.pool})
        layers = [ctx.input_layer()] + p.layers + [builder.softmax(ctx.enc.output_blob)]
        if variant != "supervised":
            dec, blob, _ = decoder(ctx.enc, mo, us, list(reversed(us)), p.blob(us[-1].last.top))
            layers += dec
            out = L.layer("dec:data/out", "Sigmoid" if mo.loss == "ce" else "Power", [blob], ["dec:data/out"])
            layers.append(out)
        return builder.net(f"{variant}-deploy", layers)

    def readme(self, ctx, variants):
        return ["Decoders are `dec:<encoder layer>`, losses `dec:loss@<target blob>`; inputs are scaled to "
                "[0, 1] (`--scale`, default 1/255 for this method). Stage `finetune` trains the classifier on "
                "`--labeled-source`.", ""]


def check_options(o):
    if o.loss not in LOSSES:
        raise ReconDecError(f"--loss: {o.loss!r} is not one of {', '.join(LOSSES)}")
    if o.noise not in NOISE:
        raise ReconDecError(f"--noise: {o.noise!r} is not one of {', '.join(NOISE)}")
    if o.noise_level is None:
        o.noise_level = {"gaussian": 0.3, "masking": 0.25}.get(o.noise)
    if o.noise == "masking" and not 0 <= o.noise_level < 1:
        raise ReconDecError(f"--noise-level: masking probability {o.noise_level} is not in [0, 1)")
    if o.noise == "gaussian" and not o.noise_level >= 0:
        raise ReconDecError(f"--noise-level: sigma {o.noise_level} is negative")
    if o.sparsity is not None and not 0 < o.sparsity < 1:
        raise ReconDecError(f"--sparsity: rho {o.sparsity} is not in (0, 1)")
    if o.code_width is not None and o.code_width < 1:
        raise ReconDecError(f"--code-width: {o.code_width} is not a positive width")
    if o.patch_size is not None and o.patch_size < 1:
        raise ReconDecError(f"--patch-size: {o.patch_size} is not positive")
    return o


register(Autoencoder())
