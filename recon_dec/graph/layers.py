"""LayerParameter constructors. Parameters are given as ``Param`` specs:
learning-rate and decay multipliers and, for weights shared between layers
(tied decoders, a second encoder pass), a Caffe parameter name."""
from dataclasses import dataclass

from ..caffe_io.protos import pb2
from ..caffe_io.shapes import pool_geometry, unpool_out


@dataclass(frozen=True)
class Param:
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""          # Caffe shares every blob whose ParamSpec has this name

    def scaled(self, factor):
        return Param(self.lr_mult * factor, self.decay_mult, self.name)


WEIGHT, BIAS = Param(1.0, 1.0), Param(2.0, 0.0)   # Caffe's usual: biases 2x LR, no decay
FROZEN = Param(0.0, 0.0)


def set_params(layer, params):
    """Replaces the layer's ParamSpecs."""
    del layer.param[:]
    for p in params:
        spec = layer.param.add()
        if p.name:
            spec.name = p.name
        spec.lr_mult, spec.decay_mult = p.lr_mult, p.decay_mult
    return layer


def layer(name, type_, bottoms, tops):
    l = pb2().LayerParameter()
    l.name, l.type = name, type_
    l.bottom.extend(bottoms)
    l.top.extend(tops)
    return l


def gaussian_noise(name, bottom, top, std):
    """GaussianNoise: + N(0, std^2) in TRAIN. Its one blob is its noise
    stream's state (key and counter, saved by snapshots), never learned."""
    l = layer(name, "GaussianNoise", [bottom], [top])
    l.gaussian_noise_param.std = std
    return set_params(l, [FROZEN])


def masking_noise(name, bottom, top, ratio):
    """MaskingNoise: each value zeroed with probability ``ratio`` in TRAIN;
    its blob, the noise stream's state, is never learned."""
    l = layer(name, "MaskingNoise", [bottom], [top])
    l.masking_noise_param.ratio = ratio
    return set_params(l, [FROZEN])


def gaussian_fillers(p, std):
    p.weight_filler.type = "gaussian"
    p.weight_filler.std = std
    p.bias_filler.type = "constant"
    p.bias_filler.value = 0.0


def _filled(l, p, params, std, bias):
    """Gaussian weights (and zero biases, or none); the layer's ParamSpecs."""
    if bias:
        gaussian_fillers(p, std)
    else:
        p.bias_term = False
        p.weight_filler.type, p.weight_filler.std = "gaussian", std
    return set_params(l, params[: 2 if bias else 1])


def _pair(cp, repeated, h_field, w_field, value, default):
    if tuple(value) == default:
        return
    if value[0] == value[1]:
        getattr(cp, repeated).append(value[0])
    else:
        setattr(cp, h_field, value[0])
        setattr(cp, w_field, value[1])


def conv_layer(name, type_, bottom, top, num_output, kernel, stride=(1, 1), pad=(0, 0),
               params=(WEIGHT, BIAS), std=0.001, bias=True):
    """Convolution or Deconvolution with gaussian weights and zero biases."""
    l = layer(name, type_, [bottom], [top])
    cp = l.convolution_param
    cp.num_output = num_output
    if kernel[0] == kernel[1]:
        cp.kernel_size.append(kernel[0])
    else:
        cp.kernel_h, cp.kernel_w = kernel
    _pair(cp, "stride", "stride_h", "stride_w", stride, (1, 1))
    _pair(cp, "pad", "pad_h", "pad_w", pad, (0, 0))
    return _filled(l, cp, params, std, bias)


def ip_layer(name, bottom, top, num_output, params=(WEIGHT, BIAS), std=0.001, bias=True, transpose=False):
    l = layer(name, "InnerProduct", [bottom], [top])
    ip = l.inner_product_param
    ip.num_output = num_output
    if transpose:
        ip.transpose = True
    return _filled(l, ip, params, std, bias)


def unpooling(name, bottom, pool_param, in_shape, out_shape, pooled_from, switches=None, overlap_sum=False):
    """Our Unpooling mirroring a max pool with ``pool_param`` that read
    ``pooled_from`` (shape ``in_shape``, C x H x W) and wrote ``out_shape``:
    KNOWN switches from the blob ``switches``, else FIXED; ``pooled_from`` as
    an extra bottom only where Caffe's formula misses the size (ceil-mode
    pooling of an odd size); ``overlap_sum``: overlapping windows summed."""
    (kh, kw), (sh, sw), (ph, pw) = pool_geometry(pool_param)
    l = layer(name, "Unpooling", [bottom] + ([switches] if switches else []), [name])
    if (unpool_out(out_shape[1], kh, sh, ph), unpool_out(out_shape[2], kw, sw, pw)) != tuple(in_shape[1:]):
        l.bottom.append(pooled_from)
    l.pooling_param.CopyFrom(pool_param)
    up = l.unpooling_param
    up.switches = up.KNOWN if switches else up.FIXED
    if overlap_sum:
        up.overlap = up.SUM
    return l


def relu(name, blob):
    return layer(name, "ReLU", [blob], [blob])


def euclidean_loss(name, prediction, target, weight):
    l = layer(name, "EuclideanLoss", [prediction, target], [name])
    l.loss_weight.append(weight)
    return l


def reshape(name, bottom, top, dims):
    r = layer(name, "Reshape", [bottom], [top])
    r.reshape_param.shape.dim.extend(dims)
    return r


def silence(name, blobs):
    return layer(name, "Silence", list(blobs), [])


def phase_only(l, phase):
    """Restricts ``l`` to ``phase`` ("TRAIN" or "TEST")."""
    l.include.add().phase = getattr(pb2(), phase)
    return l
