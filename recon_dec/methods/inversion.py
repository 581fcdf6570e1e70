"""Semi-supervised learning by deep-network inversion (../shared/papers/004,
PAPER_FACTS 4): the reconstruction is the backward pass of the network
applied to its own output, (df/dx)^T f(x), built as a decoder that shares
the classifier's weights (graph/transpose.py), and training minimises

    alpha * CE(labeled) + (1 - alpha) * [beta * R(unlabeled) + (1 - beta) * E(unlabeled)]

with R the mean squared error of the reconstruction and E the entropy of
the softmax (our EntropyLoss layer). Plain and residual nets (any DAG of
Convolution, InnerProduct, ReLU, max/average Pooling, element-wise SUM).

A training batch is the labeled stream (``--labeled-source``, with labels)
followed by the unlabeled one (``--train-source``, labels unused),
concatenated for the network and sliced again for the losses; TEST reads
``--val-source`` with labels. Variants: ``semi`` (alpha, beta as given) and
``supervised`` (the control: alpha = 1, beta = 0, the labeled stream only).

``--layer-losses``: the per-layer extension of the paper's conclusion,
equations (11) and (12),

    alpha CE + beta' E + sum_{l=0}^{L-1} gamma_l R_l,
    R_l = || (df/dz_l)^T f(x) - z_l ||^2,

with z_0 = x and z_1 .. z_{L-1} the inputs of the network's other
Convolution and InnerProduct layers (the file's order; a blob read by
several of them counts once; layers the output depends on), i.e. each
layer's output after its ReLU and pooling: the transposed pass is read off
at z_l's adjoint (the decoder's blob there, the same decoder as for R) and
compared with the encoder's own activation ``z_l`` by ``dec:loss@<z_l>``
(``dec:loss@data`` is R_0, eq. (10)'s R). R_l is a per-element mean
squared error, as R is (EuclideanLoss weighted by 2 gamma_l / D_l, D_l the
size of z_l per image), on the unlabeled rows, as R is. Eq. (11) writes the
CE and E weights as free alpha and beta; ours keep eq. (10)'s, alpha and
beta' = (1 - alpha)(1 - beta), so that --alpha/--beta mean the same with and
without the flag, and eq. (10) is the case gamma_0 = (1 - alpha) beta,
gamma_l = 0 for l > 0. The paper gives no gamma values (only the advice to
weigh the layers near the output more than those near the input): the
default is gamma_l = (1 - alpha) beta for every l (**our choice**: R_0 is
then eq. (10)'s R unchanged and every layer weighs the same per element);
``--layer-loss-weight [LAYER=]GAMMA`` overrides one layer's (LAYER: a
Convolution/InnerProduct, meaning its input, or ``data`` for R_0) or, with
no LAYER, every layer's. While some gamma is positive, a term of weight 0
stays as a monitor (Caffe prints it; no gradient).

Gradients flow into the target z_l as well as into the reconstruction (no
stop-gradient): R_l is a function of all the weights through both, and the
paper, which trains by automatic differentiation of eq. (11) in Theano,
differentiates both (tests/test_inversion.py checks the total gradient
against finite differences). The ReLU masks and pooling switches get none:
they are piecewise constant."""
import dataclasses
import os
from dataclasses import dataclass

from .. import values
from ..errors import ReconDecError, where
from ..graph import builder
from ..graph import layers as L
from ..graph.dag import DAG_TYPES, load_graph
from ..graph.data_layers import data_layers
from ..graph.transpose import encoder_layers, transpose
from . import register
from .base import Method, Stage, Variant

# the paper's grid (Section 4) and its best cell for SmallCNN (Table 2)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7)
BETAS = (0.2, 0.3, 0.5)
ADAM = dict(type="Adam", momentum=0.9, momentum2=0.999, delta=1e-8)
STAGE_DEFAULTS = {
    "train": dict(ADAM, batch=100, iter_size=1, base_lr=0.01, lr_policy="fixed", gamma=0.1, stepsize=0,
                  max_iter=10000, weight_decay=0.0, snapshot=10000, random_seed=-1),
}
PROVENANCE = """\
| setting | value | source |
|---|---|---|
| loss | alpha CE(labeled) + (1 - alpha)[beta R + (1 - beta) E](unlabeled) | the paper, eq. (10) |
| R | mean squared error of (df/dx)^T f(x) against x, per pixel (EuclideanLoss weighted by 2/D) | the paper (squared error); per-pixel mean: **our choice** |
| (alpha, beta) | 0.7, 0.2 by default; the grid {0.3 .. 0.7} x {0.2, 0.3, 0.5} | the paper's best SmallCNN cell / its grid |
| solver | Adam, base_lr 0.01 (SmallCNN; 0.01/3 for LargeCNN and the residual nets: `--base-lr train=0.00333`) | the paper's appendix |
| batch | 50 labeled + 100 unlabeled rows | **our choice** (`--labeled-batch`, `--batch`) |
| iterations, weight decay | 10000, none | **our choice** |
| inputs | scaled to [0, 1] | **our choice** |
| layer losses (`--layer-losses`) | R_l at the data and at the input of every conv/fc, gamma_l = (1 - alpha) beta each (`--layer-loss-weight`); CE and E weighted as in eq. (10) | the paper, eqs. (11)-(12); the gamma values: **our choice** (the paper gives none) |
"""


def paper_base_lr(net_path):
    """The appendix's Adam rate: 0.01 for SmallCNN, 0.01/3 for the residual
    nets and LargeCNN (by the model file's name; 0.01 for any other net)."""
    name = os.path.basename(str(net_path)).lower()
    return 0.01 / 3 if ("resnet" in name or "largecnn" in name) else 0.01


@dataclass
class Options:
    alpha: float = 0.7
    beta: float = 0.2
    labeled_batch: int = 50
    layer_losses: bool = False       # eq. (11)'s per-layer reconstruction losses
    layer_loss_weights: tuple = ()   # (LAYER or "all", gamma), as given


@dataclass
class LayerLoss:
    """R_l of eq. (12): the encoder's blob ``blob`` (z_l) against its adjoint,
    weighted ``gamma``; ``inputs_of``: the Convolution/InnerProduct layers
    that read it."""
    index: int
    blob: str
    inputs_of: list
    gamma: float


def _reaches_output(g):
    """The blobs the graph's output depends on (those with an adjoint)."""
    reach = {g.output_blob}
    for n in reversed(g.nodes):
        if n.param.top[0] in reach:
            reach.update(n.param.bottom)
    return reach


def layer_losses(g, mo):
    """[LayerLoss] of the semi variant: with ``--layer-losses`` z_0 = data
    and the input of every Convolution/InnerProduct that reaches the output;
    without it, R alone (eq. (10)). ReconDecError naming the file and the
    layer where the option cannot apply."""
    default = (1 - mo.alpha) * mo.beta
    if not mo.layer_losses:
        return [LayerLoss(0, "data", [], default)]
    reach = _reaches_output(g)
    points = {"data": []}
    for n in g.param_layers:
        if n.param.top[0] in reach:
            points.setdefault(n.param.bottom[0], []).append(n.name)
    layers = [name for names in points.values() for name in names]
    if len(points) < 2:
        why = ("the only Convolution/InnerProduct layer reads the input" if len(layers) == 1 else
               "every Convolution/InnerProduct layer reads the input" if layers else
               "no Convolution/InnerProduct layer")
        raise ReconDecError(where(g.path, layers[0] if len(layers) == 1 else None) + f"--layer-losses: {why}, "
                            "so there is no intermediate layer to reconstruct (eq. (11) is eq. (10) here)")
    gamma = dict.fromkeys(points, default)
    for key, v in mo.layer_loss_weights:
        if key == "all":
            gamma = dict.fromkeys(points, v)
    given = {}
    for key, v in mo.layer_loss_weights:
        if key == "all":
            continue
        blob = "data" if key == "data" else next((b for b, names in points.items() if key in names), None)
        if blob is None:
            node = next((n for n in g.nodes if n.name == key), None)
            options = ", ".join(["data"] + layers)
            if node is None:
                raise ReconDecError(f"{g.path}: --layer-loss-weight {key}={v:g}: the net has no layer '{key}' "
                                    f"(one of {options})")
            why = ("its output does not reach the net's output" if node.type in ("Convolution", "InnerProduct")
                   else f"a {node.type} layer; a layer loss sits at the input of a Convolution or InnerProduct")
            raise ReconDecError(where(g.path, key) + f"--layer-loss-weight {key}={v:g}: {why} (one of {options})")
        if blob in given and given[blob][1] != v:
            raise ReconDecError(where(g.path, key) + f"--layer-loss-weight {key}={v:g}: its input '{blob}' was "
                                f"given {given[blob][1]:g} by {given[blob][0]}={given[blob][1]:g}")
        given[blob] = (key, v)
        gamma[blob] = v
    return [LayerLoss(i, b, names, gamma[b]) for i, (b, names) in enumerate(points.items())]


def _layer_loss(ll, adjoint, d, lb, test):
    """R_l on the unlabeled rows (TRAIN) and on the whole batch (TEST):
    the adjoint and z_l both sliced at the labeled rows."""
    name, w = f"dec:loss@{ll.blob}", ll.gamma * 2.0 / d
    rec, tgt = f"{name}/rec", f"{name}/target"
    out = []
    for blob, top in ((adjoint, rec), (ll.blob, tgt)):
        sl = L.phase_only(L.layer(f"{top}/slice", "Slice", [blob], [f"{top}/labeled", f"{top}/unlabeled"]), "TRAIN")
        sl.slice_param.axis, sl.slice_param.slice_point[:] = 0, [lb]
        out.append(sl)
    out.append(L.phase_only(L.silence(f"{name}/silence", [f"{rec}/labeled", f"{tgt}/labeled"]), "TRAIN"))
    out.append(L.phase_only(L.euclidean_loss(name, f"{rec}/unlabeled", f"{tgt}/unlabeled", w), "TRAIN"))
    if test:
        out.append(L.phase_only(L.euclidean_loss(f"{name}/test", adjoint, ll.blob, w), "TEST"))
    return out


def _data(spec, shape, phase_batches, source, top_data, top_label):
    """One TRAIN-phase Data layer of ``source`` writing ``top_data``/``top_label``."""
    l = data_layers(dataclasses.replace(spec, train_source=source, val_source=None), shape, phase_batches)[0]
    l.name = top_data
    l.top[:] = [top_data, top_label]
    return l


class Inversion(Method):
    name = "inversion"
    help = ("semi-supervised learning by deep-network inversion: the reconstruction (df/dx)^T f(x) as a "
            "weight-sharing decoder, with entropy on the unlabeled rows")
    variants = ("semi", "supervised")
    stage_defaults = STAGE_DEFAULTS
    provenance = PROVENANCE
    encoder_types = DAG_TYPES
    needs_convolution = False
    data_defaults = {"scale": 1.0 / 255, "crop": 0, "mirror": False}

    def analyse(self, path, input_shape=None):
        return load_graph(path, input_shape)

    def add_arguments(self, g):
        g.add_argument("--alpha", type=float, help="weight of the supervised cross-entropy (default 0.7)")
        g.add_argument("--beta", type=float, help="share of the reconstruction in the unsupervised term (default 0.2)")
        g.add_argument("--labeled-batch", type=int, help="labeled rows per batch (default 50)")
        g.add_argument("--layer-losses", action="store_true", default=None,
                       help="the per-layer reconstruction losses of eq. (11): R at the input of every "
                            "Convolution/InnerProduct as well as at the data, each weighted (1 - alpha) beta "
                            "unless --layer-loss-weight")
        g.add_argument("--layer-loss-weight", action="append", metavar="[LAYER=]GAMMA",
                       help="with --layer-losses, the weight of R at the input of the "
                            "Convolution/InnerProduct LAYER (data: at the input); without LAYER, of every "
                            "layer (repeatable)")

    def options(self, args=None):
        if args is None:
            return Options()
        return check(Options(alpha=0.7 if args.alpha is None else args.alpha,
                             beta=0.2 if args.beta is None else args.beta,
                             labeled_batch=args.labeled_batch or 50, layer_losses=bool(args.layer_losses),
                             layer_loss_weights=tuple(_weight(x) for x in args.layer_loss_weight or ())))

    def build(self, ctx, variants):
        mo = check(ctx.method_options)
        if not ctx.options.data.labeled_source:
            raise ReconDecError("--labeled-source: the labeled LMDB is needed (the unlabeled one is --train-source)")
        if mo.layer_losses and "semi" not in variants:
            raise ReconDecError("--layer-losses: only the semi variant has reconstruction losses (--variant semi)")
        losses = layer_losses(ctx.enc, mo)
        return [self._variant(ctx, mo, v, losses) for v in variants]

    def _variant(self, ctx, mo, variant, losses):
        g, spec = ctx.enc, ctx.options.data
        settings = ctx.settings("train")
        alpha, beta = (1.0, 0.0) if variant == "supervised" else (mo.alpha, mo.beta)
        n, c, h, w = g.input_shape
        lb, ub = mo.labeled_batch, settings["batch"]
        layers = []
        if variant == "supervised":
            layers.append(_data(spec, g.input_shape, lb, spec.labeled_source, "data", "label"))
        else:
            layers.append(_data(spec, g.input_shape, lb, spec.labeled_source, "data/labeled", "label"))
            layers.append(_data(spec, g.input_shape, ub, spec.train_source, "data/unlabeled", "label/unlabeled"))
            cat = L.phase_only(L.layer("data/concat", "Concat", ["data/labeled", "data/unlabeled"], ["data"]), "TRAIN")
            cat.concat_param.axis = 0
            layers += [L.phase_only(L.silence("label/unlabeled/silence", ["label/unlabeled"]), "TRAIN"), cat]
        if spec.val_source:
            layers += data_layers(spec, g.input_shape, lb, phases=["TEST"])
        unsup = variant != "supervised"
        losses = losses if unsup else []
        with_decoder = any(ll.gamma > 0 for ll in losses)
        layers += encoder_layers(g, for_transpose=with_decoder)
        out = g.output_blob
        heads = []
        if unsup:
            sl = L.phase_only(L.layer("logits/slice", "Slice", [out], ["logits/labeled", "logits/unlabeled"]), "TRAIN")
            sl.slice_param.axis, sl.slice_param.slice_point[:] = 0, [lb]
            heads.append(sl)
            ce = L.layer("loss", "SoftmaxWithLoss", ["logits/labeled", "label"], ["loss"])
            heads.append(L.phase_only(ce, "TRAIN"))
            ce.loss_weight.append(alpha)
            if (1 - alpha) * (1 - beta) > 0:
                e = L.phase_only(L.layer("loss/entropy", "EntropyLoss", ["logits/unlabeled"], ["loss/entropy"]), "TRAIN")
                e.loss_weight.append((1 - alpha) * (1 - beta))
                heads.append(e)
            else:
                heads.append(L.phase_only(L.silence("logits/unlabeled/silence", ["logits/unlabeled"]), "TRAIN"))
            if spec.val_source:
                test_ce = L.phase_only(L.layer("loss/test", "SoftmaxWithLoss", [out, "label"], ["loss/test"]), "TEST")
                heads.append(test_ce)
                heads += [a for a in builder.classifier_heads(out, True)[1:]]
        else:
            heads += builder.classifier_heads(out, bool(spec.val_source))
        if with_decoder:
            adjoints = {}
            dec, rec = transpose(g, out, adjoints=adjoints)
            heads += dec
            d = c * h * w
            gamma = losses[0].gamma  # R_0, eq. (10)'s R
            rs = L.phase_only(L.layer("dec:data/slice", "Slice", [rec], ["dec:data/labeled", "dec:data/unlabeled"]),
                              "TRAIN")
            rs.slice_param.axis, rs.slice_param.slice_point[:] = 0, [lb]
            r = L.phase_only(L.euclidean_loss("dec:loss@data", "dec:data/unlabeled", "data/unlabeled",
                                              gamma * 2.0 / d), "TRAIN")
            heads += [rs, L.phase_only(L.silence("dec:data/labeled/silence", ["dec:data/labeled"]), "TRAIN"), r]
            if spec.val_source:
                heads.append(L.phase_only(L.euclidean_loss("dec:loss@data/test", rec, "data",
                                                           gamma * 2.0 / d), "TEST"))
            for ll in losses[1:]:
                heads += _layer_loss(ll, adjoints[ll.blob], _size(g.shapes[ll.blob]), lb, bool(spec.val_source))
        description = f"{variant}: alpha {alpha:g}, beta {beta:g}"
        if mo.layer_losses and unsup:
            description += "; layer losses (gamma): " + ", ".join(f"{ll.blob} {ll.gamma:g}" for ll in losses)
        stage = Stage("train", "train", description, builder.net(variant, layers + heads), settings, dir="train")
        deploy = [ctx.input_layer()] + encoder_layers(g, for_transpose=with_decoder) + [builder.softmax(out)]
        if with_decoder:
            deploy += transpose(g, out)[0]
        return Variant(variant, [stage], builder.net(f"{variant}-deploy", deploy))

    def readme(self, ctx, variants):
        lines = ["The decoder is the transposed Jacobian of the classifier (`dec:<blob>` is the adjoint of "
                 "`<blob>`); its weights are the classifier's own (`param { name: \"<layer>#0\" }`).", ""]
        mo = ctx.method_options
        if mo.layer_losses and any(v.name == "semi" for v in variants):
            lines += ["## Layer losses (eq. (11))", "",
                      "R_l = ||(df/dz_l)^T f(x) - z_l||^2 (per-element mean, unlabeled rows), gradients into "
                      "both sides; CE and E weighted as in eq. (10).", "",
                      "| l | z_l (blob) | input of | gamma | loss layer |", "|---|---|---|---|---|"]
            lines += [f"| {ll.index} | `{ll.blob}` | {', '.join(ll.inputs_of) or '-'} | {ll.gamma:g} | "
                      f"`dec:loss@{ll.blob}` |" for ll in layer_losses(ctx.enc, mo)]
            lines.append("")
        return lines


def _size(shape):
    d = 1
    for x in shape:
        d *= x
    return d


def _weight(text):
    """"[LAYER=]GAMMA" -> (LAYER or "all", gamma)."""
    key, sep, value = text.rpartition("=")
    key = key.strip() if sep else "all"
    if not key:
        raise ReconDecError(f"--layer-loss-weight: {text!r} is not [LAYER=]GAMMA")
    flag = f"--layer-loss-weight {text}" if sep else "--layer-loss-weight"
    return key, values.check_float(value.strip(), flag, 0, values.FLT_MAX)


def check(o):
    if not 0 <= o.alpha <= 1 or not 0 <= o.beta <= 1:
        raise ReconDecError(f"--alpha/--beta: {o.alpha:g}, {o.beta:g} are not both in [0, 1]")
    if o.labeled_batch < 1:
        raise ReconDecError(f"--labeled-batch: {o.labeled_batch} is not positive")
    if o.layer_loss_weights and not o.layer_losses:
        raise ReconDecError("--layer-loss-weight: the per-layer weights need --layer-losses")
    return o


register(Inversion())
