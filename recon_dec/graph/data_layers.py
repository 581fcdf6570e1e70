"""Data layers of generated train nets, one per phase: Caffe's LMDB
``Data``, Caffe's ``ImageData`` list, or our ``ScaleJitterData`` (the
paper's scale augmentation, caffe_ext/). Built as LayerParameters."""
import os
from dataclasses import dataclass, field


from ..errors import ReconDecError
from . import layers as L

KINDS = ("lmdb", "imagelist", "scale-jitter")
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)   # VGG's, the default for 3-channel nets
SOURCE_NOT_SET = "TRAIN_SOURCE_NOT_SET"


def _g(x):
    """Values are written with 6 significant digits (as the generator always has)."""
    return float(f"{x:g}")


@dataclass
class DataSpec:
    """What the data layers read and how they transform it."""
    kind: str = "lmdb"
    train_source: str = None
    labeled_source: str = None       # methods with a labeled and an unlabeled stream (train_source)
    val_source: str = None
    root_folder: str = ""            # imagelist: prefix of the list's paths
    resize: int = 0                  # imagelist: resize to resize x resize first
    scale_range: tuple = (256, 512)  # scale-jitter: random shorter edge in TRAIN
    test_size: int = 256             # scale-jitter: shorter edge in TEST
    square_size: int = None          # scale-jitter: centre square resized to NxN (AlexNet)
    threads: int = 4                 # scale-jitter: decoding threads per batch
    mean: tuple = None               # per-channel; default ImageNet's for 3 channels, none otherwise
    scale: float = None              # None: the method's default, else 1
    crop: int = None                 # None: the net's input size; 0: no crop_size
    mirror: bool = None              # random mirroring in TRAIN; None: the method's default, else True
    test_batch: int = 10
    extra: dict = field(default_factory=dict)

    def sources(self):
        s = {"TRAIN": os.path.abspath(self.train_source) if self.train_source else SOURCE_NOT_SET}
        if self.val_source:
            s["TEST"] = os.path.abspath(self.val_source)
        return s

    def phases(self):
        return ["TRAIN", "TEST"] if self.val_source else ["TRAIN"]


def data_layers(spec, input_shape, batch, phases=None):
    """One data layer per phase (TRAIN, and TEST when there is a val
    source), tops ``data`` and ``label``. ``input_shape`` is (N, C, H, W)."""
    _, channels, h, _ = input_shape
    mean = spec.mean if spec.mean is not None else (IMAGENET_MEAN_BGR if channels == 3 else ())
    if mean and len(mean) not in (1, channels):
        raise ReconDecError(f"--mean: {len(mean)} values for a {channels}-channel input")
    if spec.kind not in KINDS:
        raise ReconDecError(f"--data: {spec.kind!r} is not one of {', '.join(KINDS)}")
    sources = spec.sources()
    batches = {"TRAIN": batch, "TEST": spec.test_batch}
    crop = h if spec.crop is None else spec.crop
    out = []
    for phase in phases or spec.phases():
        train = phase == "TRAIN"
        mirror = spec.mirror is not False and train
        l = L.layer("data", {"lmdb": "Data", "imagelist": "ImageData",
                             "scale-jitter": "ScaleJitterData"}[spec.kind], [], ["data", "label"])
        L.phase_only(l, phase)
        if spec.kind == "scale-jitter":
            p = l.scale_jitter_data_param
            p.source, p.batch_size = sources[phase], batches[phase]
            p.mode = p.CENTER_SQUARE if spec.square_size else p.SCALE_JITTER
            p.min_size, p.max_size = spec.scale_range
            p.test_size, p.square_size = spec.test_size, spec.square_size or 256
            transform = p
        else:
            transform = l.transform_param
        transform.mirror = mirror
        if crop:
            transform.crop_size = crop
        transform.mean_value.extend(_g(m) for m in mean)
        if spec.scale not in (None, 1.0):
            transform.scale = _g(spec.scale)
        if spec.kind == "lmdb":
            l.data_param.source, l.data_param.batch_size = sources[phase], batches[phase]
            l.data_param.backend = l.data_param.LMDB
        elif spec.kind == "imagelist":
            p = l.image_data_param
            p.source = sources[phase]
            p.root_folder = (os.path.abspath(spec.root_folder) + "/") if spec.root_folder else ""
            p.batch_size, p.shuffle = batches[phase], train
            p.new_height = p.new_width = spec.resize
            p.is_color = channels == 3
        else:
            p.color, p.threads = channels == 3, spec.threads
        out.append(l)
    return out


