"""Caffe's shape arithmetic, in Python, so that a net Caffe would reject
fails with a message instead of a CHECK that aborts the process."""
import math


def shape_text(s):
    return "x".join(str(d) for d in s)


def _hw(repeated, has_hw, h, w, default):
    """Caffe's repeated spatial parameter or its ``_h``/``_w`` pair -> (h, w)."""
    if has_hw:
        return (h, w)
    vals = list(repeated)
    if not vals:
        return (default, default)
    return (vals[0], vals[1] if len(vals) > 1 else vals[0])


def conv_geometry(cp):
    """(kernel, stride, pad, dilation) as (h, w) pairs of a ConvolutionParameter."""
    k = _hw(cp.kernel_size, cp.HasField("kernel_h"), cp.kernel_h, cp.kernel_w, 0)
    s = _hw(cp.stride, cp.HasField("stride_h"), cp.stride_h, cp.stride_w, 1)
    p = _hw(cp.pad, cp.HasField("pad_h"), cp.pad_h, cp.pad_w, 0)
    d = _hw(cp.dilation, False, 0, 0, 1)
    return k, s, p, d


def pool_geometry(pp):
    """(kernel, stride, pad) as (h, w) pairs of a PoolingParameter."""
    k = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size, pp.kernel_size)
    s = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride, pp.stride)
    p = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
    return k, s, p


def conv_out(size, k, s, p, d=1):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def deconv_out(size, k, s, p):
    return (size - 1) * s + k - 2 * p


def pool_out(size, k, s, p):
    """Caffe's pooled size (ceil mode, last window must start inside)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def unpool_out(size, k, s, p):
    """The Unpooling layer's default output size."""
    return deconv_out(size, k, s, p)
