"""Building nets from an analysed encoder: encoder passes, input and
classifier heads, the image reconstruction target.

An *encoder pass* is one instantiation of the encoder's layers in a net.
Several passes over the same weights (a clean and a corrupted one) share
every parameter by Caffe parameter name; each pass has its own layer and
blob names (a prefix), a per-layer freeze predicate, and hooks that insert
layers after any encoder layer (noise, normalisation). Decoders read what a
pass exposes: each layer's output blob, its pre-activation (with in-place
ReLUs turned off), its ReLU mask and its pooling switches."""
import copy

from ..caffe_io.protos import net_message
from ..errors import ReconDecError
from . import layers as L
from .encoder import PARAM_TYPES

IMAGE_TARGET = "data/scaled"      # data x 1/255: the image reconstruction target
RESERVED_PREFIX = "dec:"          # names the decoders use


def net(name, layers):
    return net_message(name, layers)


def _layer_params(l, name, frozen, share, bias):
    """The ParamSpecs of encoder layer ``name``: Caffe's usual multipliers,
    or all zero when frozen; named ``<share><name>#<i>`` when the weights are
    shared between passes."""
    t = l.type
    named = (lambda i: f"{share}{name}#{i}") if share is not None else (lambda i: "")
    if t in PARAM_TYPES:
        fp = l.convolution_param if t == "Convolution" else l.inner_product_param
        n = 2 if fp.bias_term else 1
        if not fp.HasField("weight_filler"):  # training from scratch (no --weights)
            fp.weight_filler.type = "msra"
        specs = [L.FROZEN] * n if frozen else [L.WEIGHT, bias][:n]
    elif t == "BatchNorm":
        specs = [L.FROZEN] * 3  # running statistics, never learned by SGD
        if frozen:
            l.batch_norm_param.use_global_stats = True
    elif t == "Scale":
        n = 2 if l.scale_param.bias_term else 1
        specs = [L.FROZEN] * n if frozen else [L.WEIGHT, L.Param(1.0, 0.0)][:n]
    else:
        return
    L.set_params(l, [L.Param(s.lr_mult, s.decay_mult, named(i)) for i, s in enumerate(specs)])


class EncoderPass:
    """The encoder's layers for one pass; see the module docstring.

    ``freeze(enc_layer) -> bool``: lr_mult 0 (and BatchNorm on its stored
    statistics) for that layer. ``prefix``: prepended to every layer and blob
    name but the input (the first pass keeps the authors' names, so their
    caffemodels load). ``share``: name the parameters so that another pass
    built with the same ``share`` value uses the same blobs (Caffe then keeps
    one copy and sums both gradients); None leaves them unnamed.
    ``input_blob``: what the first layer reads. ``upto``: stop after the layer
    writing that blob. ``switches``: give pools their switch top (only when an
    unpooling reads it: Caffe prints unread blobs), or the names of the pools
    whose switches are read. ``dropout``: keep dropout.
    ``preactivations``: ReLUs write ``<layer>/act`` instead of in place, so
    the conv/fc output stays readable. ``relu_masks``: a Threshold layer
    ``<relu>/mask`` (1 where the unit is active) after each ReLU.
    ``hook(enc_layer or None, blob) -> None | (layers, blob)``: called for
    the input (None) and after each encoder layer; returned layers are
    inserted there and the next layer reads the returned blob. ``bias``: the
    ParamSpec of trainable conv/fc biases (Caffe's usual lr 2, decay 0)."""

    def __init__(self, enc, freeze=lambda layer: False, prefix="", share=None, input_blob="data",
                 upto=None, switches=True, dropout=True, preactivations=False, relu_masks=False,
                 hook=None, bias=L.BIAS):
        self.enc = enc
        self.prefix = prefix
        self.layers = []
        self.output = {}       # encoder layer name -> the blob it writes in this pass
        self.switches = {}     # pool layer name -> its switch blob
        self.masks = {}        # relu layer name -> its mask blob
        self.preactivation = {}  # conv/fc name -> its output before the ReLU
        blob_of = {}           # encoder blob -> this pass's blob
        tapped = set()         # blobs another layer reads: no in-place writes onto them
        current = input_blob
        if hook:
            current = self._hooked(hook, None, current)
        blob_of[enc.layers[0].bottom] = current
        for i, e in enumerate(enc.layers):
            if upto is not None and self.layers and upto in self.layers[-1].top and not _more_in_place(enc, i, upto):
                break
            if e.type == "Dropout" and not dropout:
                continue
            l = copy.deepcopy(e.param)
            l.name = prefix + e.name
            in_place = e.top == e.bottom
            l.bottom[0] = blob_of[e.bottom]
            if e.type == "ReLU" and preactivations:
                l.top[0] = f"{prefix}{e.name}/act"
            elif in_place and l.bottom[0] in tapped:
                # Caffe splits a blob with several readers, which would turn
                # an in-place layer into a second producer of the same name
                l.top[0] = prefix + e.name
            elif in_place:
                l.top[0] = l.bottom[0]
            else:
                l.top[0] = prefix + e.top
            if e.type == "Pooling":
                if switches is True or (switches is not False and e.name in switches):
                    l.top[1] = prefix + e.param.top[1]
                    self.switches[e.name] = l.top[1]
                else:
                    del l.top[1:]
            _layer_params(l, e.name, freeze(e), share, bias)
            self.layers.append(l)
            out = l.top[0]
            if e.type in PARAM_TYPES:
                self.preactivation[e.name] = out
            if e.type == "ReLU" and relu_masks:
                m = L.layer(f"{l.name}/mask", "Threshold", [out], [f"{l.name}/mask"])
                m.threshold_param.threshold = 0.0
                m.propagate_down.append(False)  # a gate: no gradient (Threshold has no backward)
                self.layers.append(m)
                self.masks[e.name] = m.top[0]
                tapped.add(out)
            self.output[e.name] = out   # what the layer itself wrote (before any hook)
            if hook:
                out = self._hooked(hook, e, out)
            blob_of[e.top] = out
        self.blob_of = blob_of

    def _hooked(self, hook, e, blob):
        res = hook(e, blob)
        if res is None:
            return blob
        extra, blob = res
        self.layers.extend(extra)
        return blob

    def blob(self, encoder_blob):
        """This pass's name of an encoder blob (as the analysis names it)."""
        try:
            return self.blob_of[encoder_blob]
        except KeyError:
            raise ReconDecError(f"{self.enc.path}: blob '{encoder_blob}' is not computed by this encoder pass")

    @property
    def output_blob(self):
        return self.layers[-1].top[0]


def _more_in_place(enc, i, blob):
    """True when encoder layer ``i`` still writes ``blob`` in place (a ReLU
    after the conv that ``upto`` names)."""
    return i < len(enc.layers) and enc.layers[i].top == blob and enc.layers[i].bottom == blob


def frozen(layer):
    """A freeze predicate: every layer (encoder frozen)."""
    return True


# --------------------------------------------------------------------------
def input_layer(enc, batch):
    _, c, h, w = enc.input_shape
    l = L.layer("data", "Input", [], ["data"])
    l.input_param.shape.add().dim.extend([batch, c, h, w])
    return l


def scaled_data():
    """``data/scaled`` = data x 1/255, the image reconstruction target."""
    l = L.layer(IMAGE_TARGET, "Power", ["data"], [IMAGE_TARGET])
    l.power_param.scale = 1.0 / 255
    return l


def uses_image_target(layers):
    return any(IMAGE_TARGET in l.bottom for l in layers)


def classifier_heads(output_blob, test):
    """Softmax loss (weight 1) and, in TEST, top-1/top-5 accuracy."""
    loss = L.layer("loss", "SoftmaxWithLoss", [output_blob, "label"], ["loss"])
    loss.loss_weight.append(1.0)
    out = [loss]
    if test:
        for k in (1, 5):
            a = L.layer(f"accuracy/top-{k}", "Accuracy", [output_blob, "label"], [f"accuracy/top-{k}"])
            L.phase_only(a, "TEST")
            if k != 1:
                a.accuracy_param.top_k = k
            out.append(a)
    return out


def softmax(output_blob):
    return L.layer("prob", "Softmax", [output_blob], ["prob"])


