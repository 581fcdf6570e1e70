"""Shared helpers for the data/train/evaluate tests: a tiny image folder with
class-dependent patterns, and tiny nets/solvers/plans written by the tests."""
import json
import os

import numpy as np

CLASSES = 4


def pattern(label, h, w, rng):
    """uint8 BGR image whose pattern depends on the class."""
    y, x = np.mgrid[0:h, 0:w]
    if label == 0:
        base = (y // 4) % 2
    elif label == 1:
        base = (x // 4) % 2
    elif label == 2:
        base = ((x // 4) + (y // 4)) % 2
    else:
        base = ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2).astype(int)
    img = np.stack([base * 180 + 30, (1 - base) * 150 + 50, base * 90 + 80], axis=2).astype(float)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root, per_class=8, h=40, w=48, seed=0, ext_cycle=(".png", ".jpg")):
    """root/cK/img_i.{png,jpg} + root/list.txt; returns (list path, items)."""
    import cv2
    rng = np.random.RandomState(seed)
    lines, items = [], []
    n = 0
    for i in range(per_class):
        for c in range(CLASSES):
            ext = ext_cycle[n % len(ext_cycle)]
            rel = f"c{c}/img_{i}{ext}"
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, pattern(c, h + (i % 3) * 4, w, rng))
            lines.append(f"{rel} {c}")
            items.append((path, c))
            n += 1
    lst = os.path.join(root, "list.txt")
    with open(lst, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lst, items


def data_layer(source, batch, phase, min_size=32, max_size=40, test_size=32, crop=28,
               mirror=True, seed=1, threads=2, top2="label", square=None):
    extra = f" mode: CENTER_SQUARE square_size: {square}" if square else ""
    return f"""layer {{
  name: "data" type: "ScaleJitterData" top: "data" top: "{top2}"
  include {{ phase: {phase} }}
  scale_jitter_data_param {{
    source: "{source}" batch_size: {batch} min_size: {min_size} max_size: {max_size}
    test_size: {test_size} crop_size: {crop} mirror: {str(mirror).lower()}
    mean_value: 128 scale: 0.015625 seed: {seed} threads: {threads}{extra}
  }}
}}
"""


BODY = """layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: LRC } param { lr_mult: LRC }
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1"
  inner_product_param { num_output: 16 weight_filler { type: "gaussian" std: 0.02 } } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: NCLS weight_filler { type: "gaussian" std: 0.05 } } }
"""


def train_net(train_db, val_db, lr_conv=1, n_classes=CLASSES, batch=16, train_kw=None):
    train_kw = train_kw or {}
    s = 'name: "tiny"\n'
    s += data_layer(train_db, batch, "TRAIN", **train_kw)
    if val_db:
        s += data_layer(val_db, 8, "TEST", threads=1)
    s += BODY.replace("LRC", str(lr_conv)).replace("NCLS", str(n_classes))
    s += 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }\n'
    if val_db:
        s += ('layer { name: "accuracy" type: "Accuracy" bottom: "fc2" bottom: "label" '
              'top: "accuracy" include { phase: TEST } }\n')
    return s


def deploy_net(n_classes=CLASSES, size=28, softmax=True):
    s = ('name: "tiny"\nlayer { name: "data" type: "Input" top: "data" '
         f'input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}\n')
    s += BODY.replace("LRC", "1").replace("NCLS", str(n_classes))
    if softmax:
        s += 'layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }\n'
    return s


def solver(net, prefix, max_iter, snapshot=0, lr=0.05, test=True, display=5, seed=1701):
    s = f"""net: "{net}"
base_lr: {lr}
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
max_iter: {max_iter}
display: {display}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
solver_mode: CPU
random_seed: {seed}
"""
    if test:
        s += "test_iter: 2\ntest_interval: 10\ntest_initialization: false\n"
    return s


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def two_stage_plan(d, train_db, val_db, iters2=20, iters4=20):
    """plan.json with stage 2 (conv1 frozen) and stage 4 (all, @stage:2)."""
    write(os.path.join(d, "step2/train_val.prototxt"), train_net(train_db, val_db, lr_conv=0))
    write(os.path.join(d, "step2/solver.prototxt"),
          solver("step2/train_val.prototxt", "snapshots/step2", iters2, snapshot=10))
    write(os.path.join(d, "step4/train_val.prototxt"), train_net(train_db, val_db, lr_conv=1))
    write(os.path.join(d, "step4/solver.prototxt"),
          solver("step4/train_val.prototxt", "snapshots/step4", iters4, snapshot=10))
    plan = {
        "format": "recon-dec-plan/1", "variant": "tiny", "source_net": "deploy.prototxt",
        "pretrained": None,
        "stages": [
            {"step": 2, "name": "step2", "solver": "step2/solver.prototxt",
             "train_net": "step2/train_val.prototxt", "init": [], "requires": [],
             "snapshot_prefix": "snapshots/step2", "max_iter": iters2,
             "output": f"snapshots/step2_iter_{iters2}.caffemodel"},
            {"step": 4, "name": "step4", "solver": "step4/solver.prototxt",
             "train_net": "step4/train_val.prototxt",
             "init": [{"weights": "@stage:2", "layers": ["conv1", "fc1", "fc2"]}],
             "requires": [2], "snapshot_prefix": "snapshots/step4", "max_iter": iters4,
             "output": f"snapshots/step4_iter_{iters4}.caffemodel"},
        ]}
    write(os.path.join(d, "deploy.prototxt"), deploy_net())
    return write(os.path.join(d, "plan.json"), json.dumps(plan, indent=1))
