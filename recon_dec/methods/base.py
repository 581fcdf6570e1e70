"""The interface every method implements, and what it returns: variants
made of stages, each stage a train net with its solver settings and the
weights that initialise it. The generic driver (runners/generate.py) turns
these into files, solvers and plan.json."""
from dataclasses import dataclass, field

from ..graph import builder, data_layers
from ..graph.encoder import ENCODER_TYPES, load_encoder
from ..graph.solver import stage_settings


@dataclass
class Init:
    """Initialise ``layers`` from ``weights``: "@pretrained", "@stage:ID"
    (another stage's output) or a caffemodel path."""
    weights: str
    layers: list


@dataclass
class Stage:
    """One ``caffe train`` run. ``dir`` is where its train_val.prototxt and
    solver.prototxt go inside the variant's directory ("" = beside
    plan.json); ``extra`` are further plan.json keys."""
    id: str
    name: str
    description: str
    net: object                  # NetParameter of the train net
    settings: dict               # solver settings (graph.solver.SETTINGS)
    dir: str = ""
    snapshot_prefix: str = ""    # default snapshots/<id>
    init: list = field(default_factory=list)
    requires: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class Variant:
    """A directory of the output: ``name`` is its path under OUT."""
    name: str
    stages: list
    deploy: object               # NetParameter for inference
    description: str = ""


@dataclass
class Context:
    """What a method builds from: the analysed encoder, the generic options
    (data, solver overrides, ...), its own options, the pretrained weights."""
    enc: object
    options: object
    method_options: object
    pretrained: str = None
    method: object = None

    def settings(self, key):
        """Solver settings of stage ``key``: the method's defaults merged
        with the user's overrides (``--base-lr KEY=VALUE``, ...)."""
        return stage_settings(self.method.stage_defaults[key], key, self.options.stage)

    def data_layers(self, batch, phases=None):
        return data_layers.data_layers(self.options.data, self.enc.input_shape, batch, phases)

    def input_layer(self):
        return builder.input_layer(self.enc, self.options.deploy_batch or self.enc.input_shape[0])

    @property
    def has_test(self):
        return bool(self.options.data.val_source)

    def classifier_heads(self):
        return builder.classifier_heads(self.enc.output_blob, self.has_test)


class Method:
    """Subclass and register an instance (``recon_dec.methods.register``).

    ``variants``: the names ``--variant`` accepts ("all" expands to them).
    ``stage_defaults``: {stage key: solver settings}; the keys are what the
    per-stage options (``--base-lr KEY=VALUE``) accept.
    ``provenance``: a Markdown table saying where each default comes from.
    ``encoder_types``, ``needs_convolution``: what the encoder analysis accepts."""
    name = ""
    help = ""
    variants = ()
    stage_defaults = {}
    provenance = ""
    encoder_types = ENCODER_TYPES   # layer types the method can take in the deploy
    needs_convolution = True        # False: MLPs too
    data_defaults = {}              # DataSpec fields the method sets when the user does not, e.g. scale

    def analyse(self, path, input_shape=None):
        """The encoder analysis of the deploy file (graph.encoder's chain of
        macro-layers by default)."""
        return load_encoder(path, input_shape, self.encoder_types, self.needs_convolution)

    def add_arguments(self, group):
        """Adds the method's own command-line flags to an argparse group.
        Give every flag default=None so that it can be told apart from unset."""

    def options(self, args=None):
        """The method's options from parsed arguments (None: the defaults)."""
        return None

    def build(self, ctx, variants):
        """-> [Variant] for the requested variant names."""
        raise NotImplementedError

    def readme(self, ctx, variants):
        """Markdown lines for the output's README.md (after the stage list)."""
        return []
