"""Patterns of Caffe's training log (glog lines of ``caffe train``) and a
parser of its loss/accuracy outputs."""
import math
import os
import re

from ..errors import ReconDecError

# "Iteration 20 (3.1 iter/s, 6.4s/20 iters), loss = 0.52"
ITERATION = re.compile(r"Iteration (\d+) \(([\d.eE+-]+|inf|nan) iter/s, .*loss = (\S+)")
ITERATION_START = re.compile(r"Iteration (\d+) \(")
TEST_START = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
TRAIN_OUTPUT = re.compile(r"Train net output #\d+: (\S+) = ([-+\w.]+)")
TEST_OUTPUT = re.compile(r"Test net output #\d+: (\S+) = ([-+\w.]+)")
FATAL = re.compile(r"^F\d{4,8} [\d:.]+\s+\d+ [^\]]+\] (.*)$")
SNAPSHOT = re.compile(r"Snapshotting solver state to binary proto file (\S+)")


def parse_log(path):
    """-> {"train": {head: [(iter, value)]}, "test": {"#k/head": [...]}}"""
    if os.path.isdir(path):
        raise ReconDecError(f"{path}: a directory, not a caffe log")
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ReconDecError(f"{path}: {e.strerror or e}") from None
    train, test = {}, {}
    it, test_it, net = None, None, 0
    for line in lines:
        m = TEST_START.search(line)
        if m:
            test_it, net = int(m.group(1)), int(m.group(2))
            continue
        m = ITERATION_START.search(line)
        if m:
            it = int(m.group(1))
            continue
        m = TRAIN_OUTPUT.search(line)
        if m and it is not None:
            train.setdefault(m.group(1), []).append((it, _number(m.group(2))))
            continue
        m = TEST_OUTPUT.search(line)
        if m and test_it is not None:
            key = m.group(1) if net == 0 else f"#{net}/{m.group(1)}"
            test.setdefault(key, []).append((test_it, _number(m.group(2))))
    return {"train": train, "test": test}


def _number(text):
    try:
        return float(text)
    except ValueError:  # "-nan(ind)", garbage: not a point of the curve
        return math.nan
