"""Ladder networks (../shared/papers/002, Algorithm 1; PAPER_FACTS 2: the
choices of the authors' official code) for an encoder given as a plain
deploy prototxt: a chain of InnerProduct and Convolution layers (ReLU, or a
leaky one, after every hidden one), Pooling (MAX or AVE, global included)
between them, the last layer feeding the softmax. Every layer is a level of
the ladder, pools included (normalised and corrupted as the official code's
``maxpool``/``globalmeanpool`` levels, linear: no beta, no ReLU). The method
inserts everything the ladder needs:

- two encoder passes over one set of weights (Caffe parameter sharing by
  name): the clean pass keeps the deploy's layer names, the corrupted pass
  is ``noisy/<layer>``. In each layer z = batchnorm(W h) with batch
  statistics (BatchStats + Normalize, no bias: beta takes its place), in
  the corrupted pass z~ = z + N(0, sigma^2) (and x~ = x + noise on the
  input), then h = relu(z + beta) for hidden layers, logits =
  gamma * (z + beta) on the softmax top (Bias and Scale layers, shared);
- the labeled and the unlabeled rows (one batch: labeled first) normalised
  with separate batch statistics (Slice, BatchStats + Normalize per half,
  Concat), as the official code; running statistics (TEST, deploy) from the
  clean labeled half (moving average fraction 0.9, unbiased variance);
- a decoder on the unlabeled rows with its own weights V: u = batchnorm of
  the corrupted softmax output at the top, u = batchnorm(V zhat) below (no
  scale/shift; below a convolution a Deconvolution of its geometry, below
  a pooling each pooled value copied over its window, then per channel),
  zhat = g(z~, u) (LadderCombinator, "gauss"), zhat_BN =
  zhat normalised with the clean unlabeled batch mean and variance (no
  gradient through them), denoising cost lambda_l ||z - zhat_BN||^2 / width
  averaged over the unlabeled rows (EuclideanLoss, weight 2 lambda / width;
  the input level is not normalised);
- supervised cross-entropy on the corrupted output of the labeled rows only;
  TEST and the deploy net: the clean pass on the running statistics.

Variants: ``full`` (every level's cost; a conv encoder's lambdas given),
``gamma`` (the Gamma-model: the top cost only; the paper's Conv-Small and
Conv-Large are Gamma-models) and ``supervised`` (the control: the same
encoder on the labeled stream alone, layer noise 0.5 as the official MLP
baseline, 0.45 as its Conv-Small baseline, no decoder).
Stages ``train`` (Adam 0.002, fixed) and ``decay`` (linearly to 0, from the
first stage's weights and running statistics)."""
import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field

from ..caffe_io import protos
from ..caffe_io.shapes import conv_geometry, pool_geometry, pool_out, shape_text
from ..errors import ReconDecError, where
from ..graph import builder
from ..graph import layers as L
from ..graph.data_layers import data_layers
from ..graph.encoder import EncLayer, _shape_after, input_shape_of, reserved, validate
from ..values import numbers
from . import register
from .base import Init, Method, Stage, Variant

ENCODER_TYPES = {"InnerProduct", "Convolution", "Pooling", "ReLU"}
WEIGHTED = ("InnerProduct", "Convolution")
NOISY = "noisy/"                 # prefix of the corrupted pass
STREAMS = ("labeled", "unlabeled")
RUNNING_FRACTION = 0.9           # the official code's running average: 0.1 of each new batch
INPUT_NOISE = 0.3                # the official --super-noise-std
SUPERVISED_NOISE = 0.5           # the official baselines' --f-local-noise-std
CONV_SUPERVISED_NOISE = 0.45     # the official Conv-Small baseline's
CONV_GAMMA_LAMBDA = 1.0          # the official Conv-Small Gamma command's top cost
PARAM_TYPES = ("InnerProduct", "Convolution", "Bias", "Scale", "BatchStats", "LadderCombinator")


@dataclass(frozen=True)
class Preset:
    """lambda_0, lambda_1 and the lambda of every higher layer; the
    Gamma-model's top lambda; the layer noise of the full ladder."""
    lambdas: tuple
    gamma_lambda: float
    layer_noise: float


# the official README's MNIST commands (run.py train ...)
PRESETS = {"100": Preset((1000.0, 10.0, 0.1), 0.5, 0.3),
           "1000": Preset((2000.0, 20.0, 0.1), 10.0, 0.2),
           "all": Preset((1000.0, 1.0, 0.01), 2.0, 0.3),
           "50": Preset((2000.0, 20.0, 0.1), 0.5, 0.3)}   # Gamma at 50 labels: not published, 100's
ADAM = dict(type="Adam", momentum=0.9, momentum2=0.999, delta=1e-8)
_STAGE = dict(ADAM, batch=100, iter_size=1, base_lr=0.002, gamma=0.1, stepsize=0, weight_decay=0.0,
              snapshot=10000, random_seed=-1)
# 150 epochs of 600 iterations (60,000 unlabeled / 100), decay from 67%
STAGE_DEFAULTS = {"train": dict(_STAGE, lr_policy="fixed", max_iter=60000),
                  "decay": dict(_STAGE, lr_policy="poly", max_iter=30000)}
PROVENANCE = """\
| setting | value | source |
|---|---|---|
| order in a layer | z = BN(W h) (batch statistics, eps 1e-10), z~ = z + noise, h = relu(z + beta); top: softmax(gamma (z + beta)) | the official code (`ladder.py`, `top_c`) |
| statistics | labeled and unlabeled rows normalised separately; running statistics from the clean labeled half, moving average 0.1 of each batch (`moving_average_fraction` 0.9), unbiased variance | the official code |
| noise | input 0.3 (`--input-noise-std`); layers 0.3, 0.2 with preset 1000 (full ladder), 0.5 for `supervised` (`--noise-std`) | the official README's commands |
| decoder | u = BN(softmax output~) at the top, BN(V zhat) below, no scale/shift; combinator "gauss", a2 = a7 = 1, others 0 | the official code |
| denoising cost | lambda_l mean_n \\|\\|z - zhat_BN\\|\\|^2 / width over the unlabeled rows, zhat_BN with the clean unlabeled mean and variance | the official code (`zestbn bugfix`); no gradient through those statistics: **our choice** (the brief; Theano differentiates through them) |
| lambda presets (`--lambdas-preset`) | 100: 1000, 10, 0.1...; 1000: 2000, 20, 0.1...; all: 1000, 1, 0.01...; 50: 2000, 20, 0.1...; Gamma: 0.5 / 10 / 2 (50: 0.5) | the official README (Gamma at 50 labels: **our choice**) |
| weights | W and V gaussian, std 1/sqrt(fan-in); no biases (beta); gamma 1, beta 0 | the official code (`randn / sqrt(in_dim)`) |
| solver | Adam lr 0.002 (beta1 0.9, beta2 0.999), batch 100 labeled + 100 unlabeled (`--batch` sets both) | the official code |
| convolutional encoders | every Convolution and Pooling layer a level: conv W h without bias, BN per channel (statistics over the batch and the positions), noise, beta per channel, ReLU; pools normalised and corrupted too, linear (no beta, no ReLU); weights uniform +-sqrt(3 / fan-in) (`xavier`); the global mean pool's constant scale (6 sqrt 3) left out (batch normalisation cancels it); the full ladder's decoder: a Deconvolution of the convolution's geometry and its own weights (xavier over the fan-in from above), pooled values copied over their windows (kernel = stride, no pad; a global pool broadcast), u and the combinator per channel, lambdas given with `--lambdas`; Gamma default top lambda 1 and supervised noise 0.45 (that baseline's shorter schedule, 20 epochs with the decay from 50%, is not the default: `--max-iter`) | the official code (`f_conv`, `f_pool`, `g_deconv`, `rand_init_conv`) and its Conv-Small commands; running variance unbiased by M/(M-1) with M the values a channel (the official code: the batch size): **our choice** (Caffe's BatchNorm convention) |
| schedule | `train` 60000 iterations fixed, then `decay` 30000 iterations linearly to 0 (`poly`, power 1) from `train`'s weights: 150 epochs of MNIST's 60,000, decay from 67% | the official code; Adam's moments restart at the second stage: **our choice** (two stages) |
"""


@dataclass
class Options:
    preset: str = "100"
    lambdas: tuple = None          # lambda_0..lambda_L (gamma: one value, or the list's last)
    noise_std: float = None        # layer noise; None: the preset's / variant's
    input_noise_std: float = None  # None: 0.3


@dataclass
class Level:
    """A level of the ladder: ``name`` (the deploy's layer, or "data" for the
    input), its output ``shape`` without the batch axis ((D,) or (C, H, W)),
    its deploy layer and the ReLU after it (EncLayers), None for the input."""
    name: str
    shape: tuple
    layer: object = None
    relu: object = None

    @property
    def type(self):
        return self.layer.type if self.layer else "Input"

    @property
    def source_name(self):
        return self.layer.source_name if self.layer else None

    @property
    def width(self):
        """Units of the level (all of them, spatial positions included: the
        official code divides a level's cost by this)."""
        return math.prod(self.shape)


@dataclass
class LadderEncoder:
    """The analysed deploy: what the generic code reads (``path``,
    ``input_shape`` (N, C, H, W), ``layers`` with the deploy's names,
    ``describe``) and the ladder's ``levels`` (input first)."""
    path: str
    input_shape: tuple
    layers: list = field(default_factory=list)
    levels: list = field(default_factory=list)

    @property
    def first_spatial(self):
        """The first Convolution or Pooling level, None for an MLP."""
        return next((lv for lv in self.levels[1:] if lv.type != "InnerProduct"), None)

    def describe(self):
        n, c, h, w = self.input_shape
        lines = [f"source: {self.path}", f"input: data {c}x{h}x{w} (batch {n})"]
        for i, lv in enumerate(self.levels[1:], 1):
            what = {"InnerProduct": "inner product", "Convolution": "convolution"}.get(lv.type) \
                or _pool_text(lv.layer.param.pooling_param)
            if i == len(self.levels) - 1:
                what += ", softmax"
            elif lv.type == "Pooling":
                what += ", linear"
            else:
                what += ", " + ("leaky ReLU" if lv.relu.param.relu_param.negative_slope else "ReLU")
            lines.append(f"level {i}: {lv.name} ({what}): {shape_text(self.levels[i - 1].shape)} -> "
                         f"{shape_text(lv.shape)}")
        return "\n".join(lines)


def _pool_text(pp):
    kind = "max" if pp.pool == pp.MAX else "average"
    if pp.global_pooling:
        return f"global {kind} pooling"
    (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
    return f"{kind} pooling {kh}x{kw}/{sh}" + (f" pad {ph}" if ph or pw else "")


def _pool_shape(l, shape, at):
    """Caffe's pooled shape, with its CHECKs as one-line errors."""
    pp = l.pooling_param
    if len(shape) != 3:
        raise ReconDecError(at + "pooling after an inner product")
    if pp.pool not in (pp.MAX, pp.AVE):
        raise ReconDecError(at + "only MAX and AVE pooling are supported")
    given = [f for f in ("kernel_size", "kernel_h", "kernel_w", "pad", "pad_h", "pad_w", "stride", "stride_h",
                         "stride_w") if pp.HasField(f)]
    if pp.global_pooling:
        if any(f.startswith("kernel") for f in given):
            raise ReconDecError(at + "global_pooling together with a kernel size: give one or the other")
        if any(getattr(pp, f) != (1 if f.startswith("stride") else 0) for f in given):
            raise ReconDecError(at + "global_pooling takes pad 0 and stride 1")
        return (shape[0], 1, 1)
    for one, h, w in (("kernel_size", "kernel_h", "kernel_w"), ("pad", "pad_h", "pad_w"),
                      ("stride", "stride_h", "stride_w")):
        if one in given and (h in given or w in given):
            raise ReconDecError(at + f"{one} together with {h}/{w}: give one or the other")
        if (h in given) != (w in given):
            raise ReconDecError(at + f"{h} and {w} go together")
    (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0:
        raise ReconDecError(at + "pooling without kernel/stride")
    if ph >= kh or pw >= kw:
        raise ReconDecError(at + f"pad {ph}x{pw} must be smaller than the kernel {kh}x{kw}")
    if kh > shape[1] + 2 * ph or kw > shape[2] + 2 * pw:
        raise ReconDecError(at + f"kernel {kh}x{kw} is larger than its input {shape_text(shape)}")
    return (shape[0], pool_out(shape[1], kh, sh, ph), pool_out(shape[2], kw, sw, pw))


def analyse(net, path, input_shape=None):
    """The ``LadderEncoder`` of a deploy NetParameter; one-line errors for a
    net the ladder cannot take."""
    for l in net.layer:
        if l.type in ("BatchNorm", "Scale", "Bias"):
            raise ReconDecError(where(path, l.name) + f"a {l.type} layer: the ladder inserts its own batch "
                                "normalisation, beta and gamma after every layer; give the plain encoder")
    chain = validate(net, path, ENCODER_TYPES)    # one chain of known types (branches named)
    shape4 = tuple(input_shape) if input_shape else input_shape_of(net, path)
    enc = LadderEncoder(path, shape4, levels=[Level("data", tuple(shape4[1:]))])
    for src in chain:
        at = where(path, src.name)
        if src.name in (e.name for e in enc.layers):
            raise ReconDecError(at + "a second layer of that name")
        if reserved(src.name) or src.name.startswith(NOISY):
            raise ReconDecError(at + f"the name '{src.name}' is reserved for what the generator adds (data, "
                                f"label, loss, prob, data/..., label/..., accuracy/..., dec:..., {NOISY}...); "
                                "rename the layer")
        below = enc.levels[-1]
        l = copy.deepcopy(src)
        if l.type == "ReLU":
            if below.layer is None:
                raise ReconDecError(at + "a ReLU before the first Convolution or InnerProduct layer")
            if below.type == "Pooling":
                raise ReconDecError(at + f"a ReLU after the pooling layer '{below.source_name}' (the ladder's "
                                    "pooling levels are linear, as the official code's; put the ReLU before it)")
            if below.relu is not None:
                raise ReconDecError(at + f"a second ReLU after '{below.source_name}'")
            below.relu = EncLayer(l, below.shape, below.shape, src.name)
            enc.layers.append(below.relu)
            continue
        if l.type == "Pooling":
            shape = _pool_shape(l, below.shape, at)
        else:
            shape = _shape_after(l, below.shape, path, src.name)   # Caffe's rules, as for every method
        enc.levels.append(Level(l.name, shape, EncLayer(l, below.shape, shape, src.name)))
        enc.layers.append(enc.levels[-1].layer)
    levels = enc.levels
    if not any(lv.type in WEIGHTED for lv in levels):
        raise ReconDecError(f"{path}: no InnerProduct or Convolution layer")
    for lv in levels[1:-1]:
        if lv.type in WEIGHTED and lv.relu is None:
            raise ReconDecError(where(path, lv.source_name) + "a hidden layer without a ReLU after it "
                                "(the ladder's hidden layers are relu(z + beta))")
    top = levels[-1]
    if top.relu is not None:
        raise ReconDecError(where(path, top.relu.source_name) + "a ReLU after the output layer "
                            f"'{top.source_name}', which feeds the softmax")
    if len(top.shape) == 3 and top.shape[1:] != (1, 1):
        raise ReconDecError(where(path, top.source_name) + f"the output layer gives {shape_text(top.shape)}; "
                            "the softmax needs one value per class (an InnerProduct, or a global pooling)")
    return enc


# --------------------------------------------------------------------------
# layers
def _stats(name, bottom, tops, fraction=None, global_stats=None):
    l = L.layer(name, "BatchStats", [bottom], list(tops))
    if fraction is not None:
        l.batch_stats_param.moving_average_fraction = fraction
    if global_stats is not None:
        l.batch_stats_param.use_global_stats = global_stats
    return l


def _normalize(name, x, mean, var, top, stats_gradient=True):
    l = L.layer(name, "Normalize", [x, mean, var], [top])
    if not stats_gradient:
        l.propagate_down.extend([True, False, False])
    return l


def _noise(name, bottom, top, std):
    return L.gaussian_noise(name, bottom, top, std)


def _normalised(n, x, at, noise, fraction=None, global_stats=None):
    """``x`` normalised with its batch statistics (BatchStats
    ``<n>/stats<at or @labeled>``: TEST and the deploy read the labeled
    half's running statistics under that name), + noise when given, into
    ``<n>/z<at>``."""
    mean, var, z = f"{n}/mean{at}", f"{n}/var{at}", f"{n}/z{at}"
    out = [_stats(f"{n}/stats{at or '@labeled'}", x, [mean, var], fraction, global_stats)]
    if noise is None:
        return out + [_normalize(f"{n}/bn{at}", x, mean, var, z)]
    return out + [_normalize(f"{n}/bn{at}", x, mean, var, f"{n}/bn{at}"),
                  _noise(f"{n}/noise{at}", f"{n}/bn{at}", z, noise)]


def _bn_split(p, name, noise, fraction):
    """TRAIN: ``<p><name>`` sliced into the labeled and unlabeled halves,
    each normalised with its own batch statistics (+ noise), concatenated
    again into ``<p><name>/z``."""
    n = p + name
    sl = L.layer(f"{n}/split", "Slice", [n], [f"{n}@{s}" for s in STREAMS])
    sl.slice_param.axis = 0      # two equal halves (both streams read --batch rows)
    out = [sl]
    for s in STREAMS:
        out += _normalised(n, f"{n}@{s}", f"@{s}", noise, fraction if s == "labeled" else None)
    cat = L.layer(f"{n}/z/concat", "Concat", [f"{n}/z@{s}" for s in STREAMS], [f"{n}/z"])
    cat.concat_param.axis = 0
    return out + [cat]


def _bn_whole(p, name, noise, fraction=None, global_stats=None):
    """``<p><name>`` normalised with the statistics of the whole batch (one
    stream; in TEST, the running statistics)."""
    return _normalised(p + name, p + name, "", noise, fraction, global_stats)


def _transform(p, lv, bottom, below):
    """The level's own operation on the level ``below``: W h without bias
    (an InnerProduct, or the deploy's Convolution), weights shared by name
    between the passes; or the deploy's Pooling."""
    if lv.type == "Pooling":
        l = L.layer(p + lv.name, "Pooling", [bottom], [p + lv.name])
        l.pooling_param.CopyFrom(lv.layer.param.pooling_param)
        return l
    shared = (L.Param(1.0, 1.0, f"{lv.name}#0"),)
    if lv.type == "InnerProduct":
        return L.ip_layer(p + lv.name, bottom, p + lv.name, lv.width, params=shared,
                          std=_g(1.0 / math.sqrt(below.width)), bias=False)
    l = L.set_params(L.layer(p + lv.name, "Convolution", [bottom], [p + lv.name]), shared)
    cp = l.convolution_param
    cp.CopyFrom(lv.layer.param.convolution_param)
    cp.bias_term = False
    cp.ClearField("bias_filler")
    cp.weight_filler.Clear()
    cp.weight_filler.type = "xavier"    # uniform +-sqrt(3 / fan-in): the official rand_init_conv
    return l


def _activation(p, lv, top):
    """relu(z + beta), or the logits gamma (z + beta) of the top layer."""
    n = p + lv.name
    beta = L.set_params(L.layer(f"{n}/beta", "Bias", [f"{n}/z"], [f"{n}/beta" if top else f"{n}/h"]),
                        [L.Param(1.0, 0.0, f"{lv.name}/beta#0")])
    if top:
        gamma = L.set_params(L.layer(f"{n}/gamma", "Scale", [f"{n}/beta"], [f"{n}/logits"]),
                             [L.Param(1.0, 0.0, f"{lv.name}/gamma#0")])
        return [beta, gamma]
    relu = L.relu(f"{n}/relu", f"{n}/h")
    if lv.relu.param.HasField("relu_param"):   # a leaky ReLU's negative_slope
        relu.relu_param.CopyFrom(lv.relu.param.relu_param)
    return [beta, relu]


def _train(layers):
    return [L.phase_only(l, "TRAIN") for l in layers]


def encoder_pass(levels, prefix, input_blob, bn):
    """One encoder pass: ``bn(prefix, level)`` -> the normalisation layers
    of a level (writing ``<prefix><name>/z``). Returns the layers; the
    output is ``<prefix><top>/logits``. A hidden pooling level is linear
    (the next level reads its z), as the official code's."""
    out, h = [], input_blob
    for i, lv in enumerate(levels[1:], 1):
        top = i == len(levels) - 1
        out.append(_transform(prefix, lv, h, levels[i - 1]))
        out += bn(prefix, lv)
        if lv.type == "Pooling" and not top:   # a linear level: h = z (no beta, no ReLU)
            h = f"{prefix}{lv.name}/z"
            continue
        out += _activation(prefix, lv, top)
        h = f"{prefix}{lv.name}/h"
    return out


def deploy_pass(levels, input_blob="data"):
    """The clean pass on running statistics (TEST phase, deploy)."""
    return encoder_pass(levels, "", input_blob, lambda p, lv: _bn_whole(p, lv.name, None, global_stats=True))


def _from_above(path, lv, above, m, reference):
    """The decoder's map from the ``above`` level's zhat down to ``lv``
    (the official code's V and ``g_deconv``), before u's normalisation:
    -> (layers, output blob, whether the combinator is per channel). Below
    an InnerProduct: V zhat (per unit). Below a Convolution: a
    Deconvolution of its own weights with the convolution's geometry (the
    official transposed "full"/"valid" convolution). Below a pooling: each
    pooled value copied over its window (fixed weights: the official
    depooling; a global pooling broadcasts), cropped to ``reference``'s
    size where the pooling rounded up. The last two per channel."""
    src = f"dec:{above.name}/zhat"
    if above.type == "InnerProduct":
        return [L.ip_layer(f"{m}/V", src, f"{m}/Vz", lv.width, params=(L.WEIGHT,),
                           std=_g(1.0 / math.sqrt(above.width)), bias=False)], f"{m}/Vz", False
    at = where(path, above.source_name)
    c, h, w = lv.shape
    if above.type == "Convolution":
        l = L.set_params(L.layer(f"{m}/V", "Deconvolution", [src], [f"{m}/Vz"]), [L.WEIGHT])
        cp = l.convolution_param
        cp.CopyFrom(above.layer.param.convolution_param)
        cp.num_output, cp.bias_term = c, False
        cp.ClearField("bias_filler")
        cp.weight_filler.Clear()
        # uniform +-sqrt(3 / fan-in of the map from above), the official rand_init_conv
        cp.weight_filler.type, cp.weight_filler.variance_norm = "xavier", cp.weight_filler.FAN_OUT
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(cp)
        got = tuple((n - 1) * s - 2 * p + d * (k - 1) + 1
                    for n, k, s, p, d in zip(above.shape[1:], (kh, kw), (sh, sw), (ph, pw), (dh, dw)))
        if got != (h, w):
            raise ReconDecError(at + f"--variant full: the decoder's deconvolution gives {got[0]}x{got[1]} "
                                f"from {shape_text(above.shape)}, not the {h}x{w} of the level below (the "
                                "convolution drops input rows or columns); pad the input to fit the stride")
        return [l], f"{m}/Vz", True
    pp = above.layer.param.pooling_param
    if pp.global_pooling:
        (kh, kw), (sh, sw) = (h, w), (1, 1)
    else:
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pp)
        if (kh, kw) != (sh, sw) or ph or pw:
            raise ReconDecError(at + f"--variant full: the decoder copies each pooled value over its window, "
                                f"which needs a kernel equal to the stride and no pad (here kernel {kh}x{kw}, "
                                f"stride {sh}x{sw}, pad {ph}x{pw}), as the official code's depooling")
    up = L.set_params(L.layer(f"{m}/up", "Deconvolution", [src], [f"{m}/up"]), [L.FROZEN])
    cp = up.convolution_param
    cp.num_output, cp.group, cp.bias_term = c, c, False
    cp.kernel_h, cp.kernel_w, cp.stride_h, cp.stride_w = kh, kw, sh, sw
    cp.weight_filler.type, cp.weight_filler.value = "constant", 1.0
    if (above.shape[1] * sh, above.shape[2] * sw) == (h, w) or pp.global_pooling:
        up.top[:] = [f"{m}/Vz"]
        return [up], f"{m}/Vz", True
    crop = L.layer(f"{m}/up/crop", "Crop", [f"{m}/up", reference], [f"{m}/Vz"])
    crop.crop_param.axis = 2
    return [up, crop], f"{m}/Vz", True


def decoder(levels, lambdas, lowest, path=None):
    """The decoder from the top down to level ``lowest`` on the unlabeled
    rows, with a denoising cost at every level whose lambda is > 0."""
    out, top = [], len(levels) - 1
    for l in range(top, lowest - 1, -1):
        lv = levels[l]
        m = f"dec:{lv.name}"
        target = "data/unlabeled" if l == 0 else f"{lv.name}/z@unlabeled"
        per_channel = False
        if l == top:
            out.append(L.layer(f"{m}/softmax", "Softmax", [f"{NOISY}{lv.name}/logits@unlabeled"], [f"{m}/prob"]))
            pre = f"{m}/prob"
        else:
            layers, pre, per_channel = _from_above(path, lv, levels[l + 1], m, target)
            out += layers
        u = f"{m}/u"
        out += [_stats(f"{m}/u/stats", pre, [f"{m}/u/mean", f"{m}/u/var"]),
                _normalize(f"{m}/u/bn", pre, f"{m}/u/mean", f"{m}/u/var", u)]
        if len(lv.shape) == 3 and not per_channel and l > 0:   # V zhat per unit, into the level's maps
            out.append(L.reshape(f"{m}/u/maps", u, f"{u}/maps", [0] + list(lv.shape)))
            u = f"{u}/maps"
        if l == 0:
            corrupted, zhat_bn = "data/unlabeled/noisy", f"{m}/zhat"
            if not per_channel:    # an InnerProduct above: the combinator per input unit
                out.append(L.layer("data/unlabeled/noisy/flat", "Flatten", ["data/unlabeled/noisy"],
                                   ["data/unlabeled/noisy/flat"]))
                corrupted = "data/unlabeled/noisy/flat"
        else:
            corrupted, zhat_bn = f"{NOISY}{lv.name}/z@unlabeled", f"{m}/zhat/bn"
        g = L.layer(f"{m}/g", "LadderCombinator", [corrupted, u], [f"{m}/zhat"])
        if per_channel:
            g.ladder_combinator_param.num_axes = 1
        out.append(g)
        if lambdas[l] > 0:
            if l > 0:
                out.append(_normalize(zhat_bn, f"{m}/zhat", f"{lv.name}/mean@unlabeled",
                                      f"{lv.name}/var@unlabeled", zhat_bn, stats_gradient=False))
            out.append(L.euclidean_loss(f"dec:loss@{lv.name}", zhat_bn, target,
                                        _g(2.0 * lambdas[l] / lv.width)))
    return out


def _g(x):
    return float(f"{x:.6g}")


def accuracy_heads(out_blob, classes):
    """TEST: the clean pass's cross-entropy and top-1 (top-5 with > 5 classes) accuracy."""
    heads = [L.phase_only(L.layer("loss/test", "SoftmaxWithLoss", [out_blob, "label"], ["loss/test"]), "TEST")]
    for k in (1, 5) if classes > 5 else (1,):
        a = L.phase_only(L.layer(f"accuracy/top-{k}", "Accuracy", [out_blob, "label"], [f"accuracy/top-{k}"]), "TEST")
        if k != 1:
            a.accuracy_param.top_k = k
        heads.append(a)
    return heads


# --------------------------------------------------------------------------
class Ladder(Method):
    name = "ladder"
    help = ("ladder networks (Rasmus et al. 2015, Algorithm 1 with the official code's choices): clean and "
            "corrupted passes sharing weights, a denoising decoder, the Gamma-model (MLPs and conv nets) "
            "and a supervised control")
    variants = ("full", "gamma", "supervised")
    stage_defaults = STAGE_DEFAULTS
    provenance = PROVENANCE
    encoder_types = ENCODER_TYPES
    needs_convolution = False
    data_defaults = {"scale": 1.0 / 255, "crop": 0, "mirror": False}   # inputs in [0, 1]

    def analyse(self, path, input_shape=None):
        return analyse(protos.load_net(path), path, input_shape)

    def add_arguments(self, g):
        g.add_argument("--lambdas-preset", choices=sorted(PRESETS),
                       help="denoising cost weights of the official MNIST commands for 100 (default), 1000, "
                            "all or 50 labels")
        g.add_argument("--lambdas", help="lambda_0,...,lambda_L: input level first, one per layer (the "
                                         "Gamma-model takes one value, or the list's last; its default is "
                                         f"the preset's, {CONV_GAMMA_LAMBDA:g} on a conv net)")
        g.add_argument("--noise-std", type=float, help="noise std after every layer's normalisation (default 0.3; "
                                                       "0.2 for full with --lambdas-preset 1000; 0.5 for supervised, "
                                                       f"{CONV_SUPERVISED_NOISE:g} on a conv net)")
        g.add_argument("--input-noise-std", type=float, help="noise std on the input (default 0.3)")

    def options(self, args=None):
        if args is None:
            return Options()
        return check(Options(preset=args.lambdas_preset or "100",
                             lambdas=numbers(args.lambdas, "--lambdas") if args.lambdas is not None else None,
                             noise_std=args.noise_std, input_noise_std=args.input_noise_std))

    def build(self, ctx, variants):
        mo = check(ctx.method_options)
        spec = ctx.options.data
        if not spec.labeled_source:
            raise ReconDecError("--labeled-source: the labeled LMDB is needed (the unlabeled one is --train-source)")
        if not spec.train_source and any(v != "supervised" for v in variants):
            raise ReconDecError("--train-source: the unlabeled LMDB is needed (variants full and gamma)")
        if ctx.pretrained:
            raise ReconDecError("--weights: the ladder trains from its fillers (its layers have no biases and "
                                "carry batch normalisation, so a classifier's caffemodel does not fit)")
        enc = ctx.enc
        check_sources(spec, enc.input_shape)
        return [self._variant(ctx, mo, enc.levels, v) for v in variants]

    # ----------------------------------------------------------------------
    def _variant(self, ctx, mo, levels, variant):
        conv = ctx.enc.first_spatial is not None
        lambdas = lambdas_for(mo, variant, levels, ctx.enc.path, conv)
        noise = noise_for(mo, variant, conv)
        lam = ", ".join(f"{x:g}" for x in lambdas) if lambdas else "none"
        what = f"{variant}: lambda {lam}; noise input {noise[0]:g}, layers {noise[1]:g}"
        train, decay = (ctx.settings(k) for k in ("train", "decay"))
        train_net, decay_net = (self._layers(ctx, levels, variant, lambdas, noise, s["batch"]) for s in (train, decay))
        params = []    # every layer with blobs: weights, beta/gamma, combinators, running statistics
        for l in train_net:
            if l.type in PARAM_TYPES and l.name not in params:
                params.append(l.name)
        stages = [Stage("train", "train", f"{what}; Adam lr {train['base_lr']:g}", builder.net(variant, train_net),
                        train, dir="train"),
                  Stage("decay", "decay", "the same net, the learning rate linearly to 0 (from train's weights)",
                        builder.net(variant, decay_net), decay, dir="decay", init=[Init("@stage:train", params)],
                        requires=["train"])]
        deploy = [ctx.input_layer()] + deploy_pass(levels) + [builder.softmax(f"{levels[-1].name}/logits")]
        return Variant(variant, stages, builder.net(f"{variant}-deploy", deploy), what)

    def _layers(self, ctx, levels, variant, lambdas, noise, batch):
        spec, shape = ctx.options.data, ctx.enc.input_shape
        top = levels[-1].name
        test = bool(spec.val_source)
        layers = []
        if variant == "supervised":
            layers += data_layers(dataclasses.replace(spec, train_source=spec.labeled_source), shape, batch)
            layers += _train([_noise("data/noise", "data", "data/noisy", noise[0])])
            clean = encoder_pass(levels, "", "data", lambda p, lv: _bn_whole(p, lv.name, None, RUNNING_FRACTION))
            noisy = encoder_pass(levels, NOISY, "data/noisy", lambda p, lv: _bn_whole(p, lv.name, noise[1]))
            ce = L.layer("loss", "SoftmaxWithLoss", [f"{NOISY}{top}/logits", "label"], ["loss"])
            ce.loss_weight.append(1.0)
            rest = [ce]
        else:
            for s in STREAMS:
                source = spec.labeled_source if s == "labeled" else spec.train_source
                d = data_layers(dataclasses.replace(spec, train_source=source, val_source=None), shape, batch)[0]
                d.name = f"data/{s}"
                d.top[:] = [f"data/{s}", "label" if s == "labeled" else f"label/{s}"]
                layers.append(d)
            layers.append(L.phase_only(L.silence("label/unlabeled/silence", ["label/unlabeled"]), "TRAIN"))
            layers += _train([_noise(f"data/{s}/noise", f"data/{s}", f"data/{s}/noisy", noise[0]) for s in STREAMS])
            for top_blob, suffix in (("data", ""), ("data/noisy", "/noisy")):   # labeled rows first
                cat = L.layer(f"{top_blob}/concat", "Concat", [f"data/{s}{suffix}" for s in STREAMS], [top_blob])
                cat.concat_param.axis = 0
                layers.append(L.phase_only(cat, "TRAIN"))
            if test:
                layers += data_layers(spec, shape, batch, phases=["TEST"])

            def clean_bn(p, lv):
                out = _train(_bn_split(p, lv.name, None, RUNNING_FRACTION))
                return out + ([L.phase_only(l, "TEST") for l in _bn_whole(p, lv.name, None)] if test else [])

            clean = encoder_pass(levels, "", "data", clean_bn)
            noisy = encoder_pass(levels, NOISY, "data/noisy", lambda p, lv: _bn_split(p, lv.name, noise[1], None))
            sl = L.layer(f"{NOISY}{top}/logits/split", "Slice", [f"{NOISY}{top}/logits"],
                         [f"{NOISY}{top}/logits@{s}" for s in STREAMS])
            sl.slice_param.axis = 0
            ce = L.layer("loss", "SoftmaxWithLoss", [f"{NOISY}{top}/logits@labeled", "label"], ["loss"])
            ce.loss_weight.append(1.0)
            lowest = min(l for l, x in enumerate(lambdas) if x > 0)
            rest = [sl, ce] + decoder(levels, lambdas, lowest, ctx.enc.path)
        layers += clean + _train(noisy) + _train(rest)
        layers.append(L.phase_only(L.silence(f"{top}/logits/silence", [f"{top}/logits"]), "TRAIN"))
        if test:
            layers += accuracy_heads(f"{top}/logits", levels[-1].width)
        return layers

    def readme(self, ctx, variants):
        return ["The clean pass keeps the deploy's layer names, the corrupted pass is `noisy/<layer>` (the same "
                "weights, by parameter name); `<layer>/z@labeled|unlabeled` are the normalised halves, "
                "`<layer>/stats@labeled` holds the running statistics TEST and the deploy net use; the decoder is "
                "`dec:<layer>/...` (`V`, `u`, `g` the combinator, `zhat`), its costs `dec:loss@<layer>` "
                "(already weighted: 2 lambda / width). Stage `decay` starts from `train`'s weights and running "
                "statistics. The official code evaluates with the statistics recomputed over the training set: "
                "`recon-dec recompute-stats --net deploy.prototxt --weights W --db TRAIN_LMDB --scale 0.00392157 "
                "--out W2` writes them into a copy of the weights.", ""]


def lambdas_for(mo, variant, levels, path, conv=False):
    """The lambda of every level (input first) of ``variant``; () for the
    supervised control. ``conv``: the encoder has convolutions (the
    Gamma-model's default is then the Conv-Small command's)."""
    n = len(levels)
    if variant == "supervised":
        return ()
    if variant == "gamma":
        top = (mo.lambdas[-1] if mo.lambdas is not None else CONV_GAMMA_LAMBDA if conv
               else PRESETS[mo.preset].gamma_lambda)
        if mo.lambdas is not None and len(mo.lambdas) not in (1, n):
            raise ReconDecError(f"--lambdas: {len(mo.lambdas)} values; the Gamma-model takes one value or {n} "
                                f"(lambda_0..lambda_{n - 1} of {path}, the last used)")
        if not top > 0:
            raise ReconDecError(f"--lambdas: the Gamma-model's top lambda is {top:g}; it must be positive")
        return (0.0,) * (n - 1) + (top,)
    if mo.lambdas is None:
        if conv:
            raise ReconDecError(f"--lambdas: --variant full on the convolutional encoder {path} needs its "
                                f"{n} lambdas (lambda_0 for the input, then one per level); the presets are the "
                                "official MLP commands', and the official code publishes none for a conv ladder")
        p = PRESETS[mo.preset].lambdas
        return (p[0],) + (p[1],) + (p[2],) * (n - 2)
    if len(mo.lambdas) != n:
        raise ReconDecError(f"--lambdas: {len(mo.lambdas)} values for the {n} levels of {path} "
                            f"(lambda_0 for the input, then one per layer)")
    if not any(x > 0 for x in mo.lambdas):
        raise ReconDecError("--lambdas: every lambda is 0 (the supervised control is --variant supervised)")
    return tuple(mo.lambdas)


def noise_for(mo, variant, conv=False):
    """(input noise std, layer noise std) of ``variant``; ``conv``: the
    encoder has convolutions (the Conv-Small baseline's noise)."""
    layer = {"full": PRESETS[mo.preset].layer_noise, "gamma": 0.3,
             "supervised": CONV_SUPERVISED_NOISE if conv else SUPERVISED_NOISE}[variant]
    return (INPUT_NOISE if mo.input_noise_std is None else mo.input_noise_std,
            layer if mo.noise_std is None else mo.noise_std)


def check_sources(spec, input_shape):
    """Each LMDB given that exists already: its images have the channels
    and size of the net's input (N, C, H, W), as Caffe's Data layer will read
    them (a missing one is fine: the split can be written later; `recon-dec
    train` checks again)."""
    if spec.kind != "lmdb":
        return
    from ..data import store
    _, c, h, w = input_shape
    for flag, src in (("--labeled-source", spec.labeled_source), ("--train-source", spec.train_source),
                      ("--val-source", spec.val_source)):
        if not src or not os.path.exists(src):
            continue
        try:
            have = store.first_image(src)
        except ReconDecError as e:
            raise ReconDecError(f"{flag}: {e}") from None
        crop = spec.crop or 0
        if have[0] != c:
            raise ReconDecError(f"{flag}: {src}: images with {have[0]} channel{'s' * (have[0] != 1)}, the net "
                                f"takes {c}")
        if crop and (have[1] < crop or have[2] < crop):
            raise ReconDecError(f"{flag}: {src}: images of {have[1]}x{have[2]} are smaller than the "
                                f"{crop}x{crop} crop")
        if not crop and have[1:] != (h, w):
            raise ReconDecError(f"{flag}: {src}: images of {have[1]}x{have[2]}, the net takes {h}x{w} (no crop)")


def check(o):
    if o.preset not in PRESETS:
        raise ReconDecError(f"--lambdas-preset: {o.preset!r} is not one of {', '.join(PRESETS)}")
    if o.lambdas is not None and any(x < 0 for x in o.lambdas):
        raise ReconDecError(f"--lambdas: {','.join(f'{x:g}' for x in o.lambdas)}: every lambda must be >= 0")
    for flag, x in (("--noise-std", o.noise_std), ("--input-noise-std", o.input_noise_std)):
        if x is not None and not 0 <= x < math.inf:
            raise ReconDecError(f"{flag}: {x:g} is not a finite std >= 0")
    return o


register(Ladder())
