#!/usr/bin/env python
"""Unpooling layer throughput on VGG16's unpooling shapes: forward and
backward time of Unpooling (known and fixed switches; AlexNet's overlapping
3x3/2 too) against Caffe's own MAX Pooling on the same tensors, and achieved
bandwidth against a plain copy of the unpooled tensor by Caffe itself (a
Power layer with default parameters is caffe_copy: cudaMemcpy device to
device on a GPU, memcpy on the CPU), all measured in the same run.

    .venv/bin/python bench/bench_unpooling.py [--batch 8] [--repeats 5] [--gpu 0]
        [--clock wall|process]

--clock process times the CPU time of this process (time.process_time)
instead of wall time: for a CPU run on a machine whose cores are busy with
other work (e.g. under nice), where wall time mostly measures waiting.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")

# (name, channels, pooled size, kernel, stride): VGG16 blocks 1-5, AlexNet pool1
SHAPES = [("vgg pool1", 64, 112, 2, 2), ("vgg pool2", 128, 56, 2, 2), ("vgg pool3", 256, 28, 2, 2),
          ("vgg pool4", 512, 14, 2, 2), ("vgg pool5", 512, 7, 2, 2), ("alexnet pool1", 96, 27, 3, 2)]


def net_file(batch, channels, pooled, kernel, stride):
    import caffe
    from caffe import layers as L, params as P
    size = (pooled - 1) * stride + kernel
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, channels, size, size]))
    pool = dict(pool=P.Pooling.MAX, kernel_size=kernel, stride=stride)
    n.pooled, n.mask = L.Pooling(n.data, pooling_param=pool, ntop=2)
    n.known = L.Unpooling(n.pooled, n.mask, pooling_param=pool)
    n.fixed = L.Unpooling(n.pooled, pooling_param=pool, unpooling_param=dict(switches=P.Unpooling.FIXED))
    n.copied = L.Power(n.known)  # y = x: caffe_copy, the bandwidth reference
    proto = n.to_proto()
    proto.force_backward = True
    f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    f.write(str(proto))
    f.close()
    return f.name, size


def timed(fn, repeats, sync, clock=time.perf_counter):
    fn()
    sync()
    t = clock()
    for _ in range(repeats):
        fn()
    sync()
    return (clock() - t) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="wall time (default) or this process's CPU time (CPU runs only)")
    args = ap.parse_args()
    if args.clock == "process" and args.gpu is not None:
        ap.error("--clock process times the CPU only; a GPU run needs wall time")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    import caffe
    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    device = "CPU" if args.gpu is None else f"GPU {args.gpu}"
    print(f"Unpooling vs MAX Pooling, batch {args.batch}, {device}, mean of {args.repeats} passes, "
          f"{args.clock} clock")
    print(f"{'shape':14} {'pool fwd ms':>11} {'known fwd':>10} {'fixed fwd':>10} {'known bwd':>10} "
          f"{'known/pool':>10} {'GB/s':>7} {'copy GB/s':>9} {'of copy':>8}")
    for name, c, p, k, s in SHAPES:
        path, size = net_file(args.batch, c, p, k, s)
        net = caffe.Net(path, caffe.TEST)
        os.unlink(path)
        net.blobs["data"].data[...] = np.random.rand(*net.blobs["data"].data.shape)
        names = list(net._layer_names)
        layer = {n: i for i, n in enumerate(names)}
        # reading a blob's CPU data waits for the GPU (and copies it back,
        # a constant cost in every timing): crude but dependency-free
        sync = (lambda: net.blobs["copied"].data) if args.gpu is not None else (lambda: None)
        t_pool = timed(lambda: net._forward(layer["pooled"], layer["pooled"]), args.repeats, sync, clock)
        t_known = timed(lambda: net._forward(layer["known"], layer["known"]), args.repeats, sync, clock)
        t_fixed = timed(lambda: net._forward(layer["fixed"], layer["fixed"]), args.repeats, sync, clock)
        net.blobs["known"].diff[...] = 1
        t_back = timed(lambda: net._backward(layer["known"], layer["known"]), args.repeats, sync, clock)
        t_copy = timed(lambda: net._forward(layer["copied"], layer["copied"]), args.repeats, sync, clock)
        # bytes moved: known forward reads values + switches and writes the
        # output; the copy reads and writes the output once
        moved = 2 * net.blobs["pooled"].data.nbytes + net.blobs["known"].data.nbytes
        gbs = moved / t_known / 1e9
        copy_gbs = 2 * net.blobs["known"].data.nbytes / t_copy / 1e9
        print(f"{name:14} {t_pool * 1e3:11.2f} {t_known * 1e3:10.2f} {t_fixed * 1e3:10.2f} "
              f"{t_back * 1e3:10.2f} {t_known / t_pool:10.2f} {gbs:7.2f} {copy_gbs:9.2f} "
              f"{gbs / copy_gbs:8.2f}")


if __name__ == "__main__":
    sys.exit(main())
