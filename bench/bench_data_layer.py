#!/usr/bin/env python
"""Throughput of the ScaleJitterData layer (decode JPEG, random shorter edge
in [256, 512], random 224 crop / mirror, mean subtraction) per `threads`
setting, on an LMDB of synthetic ImageNet-sized JPEGs stored at shorter edge
512 (as `recon-dec data build` writes the training set). Prints images/s and
the ratio against threads=1 measured in the same run.

    .venv/bin/python bench/bench_data_layer.py [--threads 1,2,4] [--batches 12]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--images", type=int, default=96, help="distinct images in the LMDB")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    ap.add_argument("--db", help="use this LMDB instead of a synthetic one")
    args = ap.parse_args()
    import caffe
    from recon_dec.data import store as data
    caffe.set_mode_cpu()
    tmp = tempfile.mkdtemp(prefix="bench-sj-")
    db = args.db
    if not db:
        rng = np.random.RandomState(0)
        items = []
        for i in range(args.images):
            # smooth random image (JPEG-compressible like a photo), 375x500
            small = rng.randint(0, 255, (24, 32, 3), dtype=np.uint8)
            import cv2
            img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            items.append((img, i % 1000))
        db = os.path.join(tmp, "db")
        data.build_lmdb(items, db, shorter_edge=512, encoding="jpg", progress=False)
    threads = [int(t) for t in args.threads.split(",")]
    print(f"ScaleJitterData: batch {args.batch}, shorter edge 256..512, crop 224, "
          f"JPEG 512xN source, {os.cpu_count()} CPUs")
    print(f"{'threads':>7} {'images/s':>10} {'vs threads=1':>13}")
    base = None
    for t in threads:
        proto = os.path.join(tmp, f"net{t}.prototxt")
        with open(proto, "w") as f:
            f.write(f'''layer {{ name: "data" type: "ScaleJitterData" top: "data" top: "label"
  scale_jitter_data_param {{ source: "{db}" batch_size: {args.batch} min_size: 256
    max_size: 512 crop_size: 224 mean_value: 104 mean_value: 117 mean_value: 123
    threads: {t} seed: 1 prefetch: 1 }} }}
''')
        net = caffe.Net(proto, caffe.TRAIN)
        for _ in range(2):  # drain what was prefetched during setup
            net.forward()
        t0 = time.time()
        for _ in range(args.batches):
            net.forward()
        ips = args.batches * args.batch / (time.time() - t0)
        base = base or ips
        print(f"{t:>7} {ips:>10.1f} {ips / base:>12.2f}x")
        del net


if __name__ == "__main__":
    main()
