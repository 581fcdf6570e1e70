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
``supervised`` (the control: alpha = 1, beta = 0, the labeled stream only)."""
import dataclasses
import os
from dataclasses import dataclass

from ..errors import ReconDecError
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

    def options(self, args=None):
        if args is None:
            return Options()
        return check(Options(alpha=0.7 if args.alpha is None else args.alpha,
                             beta=0.2 if args.beta is None else args.beta,
                             labeled_batch=args.labeled_batch or 50))

    def build(self, ctx, variants):
        mo = check(ctx.method_options)
        if not ctx.options.data.labeled_source:
            raise ReconDecError("--labeled-source: the labeled LMDB is needed (the unlabeled one is --train-source)")
        return [self._variant(ctx, mo, v) for v in variants]

    def _variant(self, ctx, mo, variant):
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
        with_decoder = unsup and (1 - alpha) * beta > 0
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
            dec, rec = transpose(g, out)
            heads += dec
            d = c * h * w
            rs = L.phase_only(L.layer("dec:data/slice", "Slice", [rec], ["dec:data/labeled", "dec:data/unlabeled"]),
                              "TRAIN")
            rs.slice_param.axis, rs.slice_param.slice_point[:] = 0, [lb]
            r = L.phase_only(L.euclidean_loss("dec:loss@data", "dec:data/unlabeled", "data/unlabeled",
                                              (1 - alpha) * beta * 2.0 / d), "TRAIN")
            heads += [rs, L.phase_only(L.silence("dec:data/labeled/silence", ["dec:data/labeled"]), "TRAIN"), r]
            if spec.val_source:
                heads.append(L.phase_only(L.euclidean_loss("dec:loss@data/test", rec, "data",
                                                           (1 - alpha) * beta * 2.0 / d), "TEST"))
        stage = Stage("train", "train", f"{variant}: alpha {alpha:g}, beta {beta:g}", builder.net(variant, layers + heads),
                      settings, dir="train")
        deploy = [ctx.input_layer()] + encoder_layers(g, for_transpose=with_decoder) + [builder.softmax(out)]
        if with_decoder:
            deploy += transpose(g, out)[0]
        return Variant(variant, [stage], builder.net(f"{variant}-deploy", deploy))

    def readme(self, ctx, variants):
        return ["The decoder is the transposed Jacobian of the classifier (`dec:<blob>` is the adjoint of "
                "`<blob>`); its weights are the classifier's own (`param { name: \"<layer>#0\" }`).", ""]


def check(o):
    if not 0 <= o.alpha <= 1 or not 0 <= o.beta <= 1:
        raise ReconDecError(f"--alpha/--beta: {o.alpha:g}, {o.beta:g} are not both in [0, 1]")
    if o.labeled_batch < 1:
        raise ReconDecError(f"--labeled-batch: {o.labeled_batch} is not positive")
    return o


register(Inversion())
