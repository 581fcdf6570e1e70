"""Evaluation of a deploy net on an image LMDB: single-crop (shorter edge S,
centre C x C crop, no mirror) and dense (the fc layers turned into
convolutions with the same weights; image at shorter edge S and its mirror;
class posteriors averaged over the spatial grid and both), top-1 / top-5
error in percent."""
import json
import os
import tempfile
import time

import numpy as np

from .. import atomic, values
from ..caffe_io import netcheck, protos
from ..data import store as data
from ..errors import ReconDecError, where

FORMAT = "recon-dec-eval/1"


def _caffe():
    import caffe
    return caffe


def parse_mean(mean, channels):
    """``mean``: None, a list of numbers, "104,117,123", a .npy or a
    .binaryproto (mean image, averaged per channel) -> float32 (channels,)."""
    if mean is None or mean == "":
        return np.zeros(channels, np.float32)
    if isinstance(mean, str):
        if os.path.isfile(mean):
            arr = _mean_file(mean)
            vals = arr.reshape(arr.shape[0], -1).mean(1) if arr.ndim >= 2 else arr
        else:
            try:
                vals = list(values.numbers(mean, "--mean"))
            except ReconDecError:
                raise ReconDecError(f"--mean: '{mean}' is neither a file nor comma-separated numbers") from None
    else:
        vals = list(mean)
    vals = np.asarray(vals, np.float32).ravel()
    if not np.all(np.isfinite(vals)):
        raise ReconDecError("--mean: the mean holds values that are not finite numbers")
    if vals.size == 1:
        vals = np.repeat(vals, channels)
    if vals.size != channels:
        raise ReconDecError(f"--mean: {vals.size} values for a {channels}-channel input")
    return vals


def _mean_file(path):
    """A mean image (.npy, or Caffe's .binaryproto) as a float32 array."""
    try:
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            b = protos.pb2().BlobProto()
            with open(path, "rb") as f:
                b.ParseFromString(f.read())
            shape = tuple(b.shape.dim) if b.HasField("shape") else (b.num, b.channels, b.height, b.width)
            if not len(b.data) or int(np.prod(shape)) != len(b.data):
                raise ValueError("no data of its shape")
            arr = np.asarray(b.data, np.float32).reshape(shape)[0] if len(shape) == 4 else \
                np.asarray(b.data, np.float32)
        arr = np.asarray(arr, np.float32)
    except ReconDecError:
        raise
    except Exception:
        raise ReconDecError(f"{path}: --mean file is neither a .npy array nor a Caffe .binaryproto mean") from None
    if arr.size == 0:
        raise ReconDecError(f"{path}: --mean file is empty")
    return arr


def input_shape(deploy):
    """(C, H, W) of a deploy net's input (its Input layer, or the legacy
    input_dim / input_shape fields), or None when it declares none."""
    net = protos.read_net(deploy)
    for l in net.layer:
        if l.type == "Input" and l.input_param.shape:
            dims = list(l.input_param.shape[0].dim)
            return tuple(dims[1:]) if len(dims) == 4 else None
    if len(net.input_shape):
        dims = list(net.input_shape[0].dim)
        return tuple(dims[1:]) if len(dims) == 4 else None
    if len(net.input_dim) == 4:
        return tuple(net.input_dim[1:])
    return None


def check_inputs(deploy, crop, scheme):
    """The deploy net's input against the crop: the class scores (and the
    dense conversion of the fc layers) are for the net's own input size."""
    shape = input_shape(deploy)
    if shape is None:
        raise ReconDecError(f"{deploy}: no Input layer with a N,C,H,W shape (a deploy prototxt is needed)")
    c, h, w = shape
    if min(shape) < 1:
        raise ReconDecError(f"{deploy}: input shape {c}x{h}x{w}: every dimension must be >= 1")
    if c not in (1, 3):
        raise ReconDecError(f"{deploy}: the input has {c} channels; images have 1 (grey) or 3 (BGR)")
    if (crop, crop) != (h, w):
        raise ReconDecError(f"--crop: {crop} differs from the net's input {h}x{w} ({deploy}); "
                            f"evaluate at --crop {h}" if h == w else
                            f"{deploy}: the input {h}x{w} is not square; {scheme} evaluation takes square crops")
    return shape


# --------------------------------------------------------------------------
def _blob_shape(b):
    if b.HasField("shape"):
        return tuple(b.shape.dim)
    return tuple(d for d in (b.num, b.channels, b.height, b.width))


def load_weights(net, weights, deploy):
    """Copies ``weights`` (caffemodel) into ``net`` by layer name, checking
    shapes first: a mismatch is a one-line ReconDecError, not an abort."""
    m = protos.read_caffemodel(weights)
    src = {name: l.blobs for name, l in protos.caffemodel_layers(m).items()}
    copied = 0
    for name, params in net.params.items():
        if name not in src:
            continue
        blobs = src[name]
        if len(blobs) != len(params):
            raise ReconDecError(f"{weights}: layer '{name}': {len(blobs)} param blobs, "
                                f"the net ({deploy}) has {len(params)}")
        for i, (b, p) in enumerate(zip(blobs, params)):
            shape = _blob_shape(b)
            if b.HasField("shape"):  # Caffe requires the exact shape
                bad = shape != tuple(p.data.shape)
            else:  # legacy num/channels/height/width: compared as 4-D
                bad = shape != (1,) * (4 - p.data.ndim) + tuple(p.data.shape)
            if bad:
                raise ReconDecError(f"{weights}: layer '{name}': param {i} has shape "
                                    f"{'x'.join(map(str, shape))}, the net ({deploy}) needs "
                                    f"{'x'.join(map(str, p.data.shape))}")
        copied += 1
    missing = [n for n in net.params if n not in src]
    if copied == 0 or missing:
        raise ReconDecError(f"{weights}: no weights for layer '{missing[0]}' of {deploy}"
                            if missing else f"{weights}: no layer matches {deploy}")
    del m, src
    net.copy_from(weights)  # checked above, so Caffe's own checks pass
    return copied


DECODER_PREFIX = "dec:"


def classifier_only(param, path=None):
    """Drops the decoder (layers named ``dec:...``) from a NetParameter: the
    class scores never depend on it, and its unpooling shapes only mirror at
    the training input size, not at a dense-evaluation size. A classifier
    layer that reads what a ``dec:`` layer writes is an error (the name is
    reserved for decoders)."""
    dropped = [l for l in param.layer if l.name.startswith(DECODER_PREFIX)]
    keep = [l for l in param.layer if not l.name.startswith(DECODER_PREFIX)]
    written = {t for l in keep for t in l.top}
    for l in keep:
        for b in l.bottom:
            if b not in written and any(b in d.top for d in dropped):
                src = next(d for d in dropped if b in d.top)
                raise ReconDecError(where(path, src.name) + "names starting 'dec:' are reserved for "
                                    f"decoder layers, which evaluation drops, but layer '{l.name}' of the "
                                    "classifier reads it; rename the layer")
        written.update(l.top)
    del param.layer[:]
    param.layer.extend(keep)
    return param


def check_builds(deploy, param, gpu=None):
    """The classifier of ``deploy`` built by Caffe in a child process first:
    a net Caffe rejects (or a GPU it lacks) is a one-line error, not an abort
    of this process."""
    shape = input_shape(deploy)
    if shape is None:
        raise ReconDecError(f"{deploy}: no Input layer with a N,C,H,W shape (a deploy prototxt is needed)")
    netcheck.check_nets([netcheck.Net(deploy, protos.to_text(param))], (1,) + tuple(shape), gpu=gpu)


def load_net(deploy, weights, gpu=None):
    caffe = _caffe()
    param = classifier_only(protos.read_net(deploy), deploy)  # also a clear error for an unparsable prototxt
    check_builds(deploy, param, gpu)
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(protos.to_text(param))
        f.flush()
        net = caffe.Net(f.name, caffe.TEST)
    if weights:
        load_weights(net, weights, deploy)
    return net


def fully_convolutional(deploy, net, crop, out_prototxt):
    """Writes a fully-convolutional version of ``deploy`` to ``out_prototxt``
    (each InnerProduct becomes a Convolution of the same name whose kernel
    covers its input at a ``crop`` input -- the first fc -- or 1x1; Flatten
    layers feeding them are dropped) and returns a caffe.Net holding
    ``net``'s weights, reshaped."""
    caffe = _caffe()
    param = classifier_only(protos.read_net(deploy), deploy)
    inp = net.inputs[0]
    shape = list(net.blobs[inp].data.shape)
    net.blobs[inp].reshape(1, shape[1], crop, crop)
    net.reshape()
    flatten = {}   # top -> bottom of Flatten layers
    keep = []
    for l in param.layer:
        if l.type == "Flatten":
            flatten[l.top[0]] = l.bottom[0]
            continue
        keep.append(l)
    del param.layer[:]
    for l in keep:
        for i, b in enumerate(l.bottom):
            while b in flatten:
                b = flatten[b]
            l.bottom[i] = b
        if l.type == "InnerProduct":
            ip = l.inner_product_param
            if ip.axis not in (1, -3) and ip.HasField("axis"):
                raise ReconDecError(f"{deploy}: layer '{l.name}': InnerProduct axis {ip.axis} "
                                    "cannot be converted to a convolution")
            bshape = net.blobs[l.bottom[0]].data.shape
            kh, kw = (bshape[2], bshape[3]) if len(bshape) == 4 else (1, 1)
            conv = l.convolution_param
            conv.num_output = ip.num_output
            conv.bias_term = ip.bias_term
            conv.kernel_h, conv.kernel_w = kh, kw
            l.type = "Convolution"
            l.ClearField("inner_product_param")
        param.layer.add().CopyFrom(l)
    atomic.write_text(out_prototxt, protos.to_text(param))
    fc = caffe.Net(out_prototxt, caffe.TEST)
    for name, params in net.params.items():
        for src, dst in zip(params, fc.params[name]):
            if src.data.size != dst.data.size:
                raise ReconDecError(f"{deploy}: layer '{name}': cannot reshape "
                                    f"{src.data.shape} into {dst.data.shape}")
            dst.data[...] = src.data.reshape(dst.data.shape)
    return fc


def convert_fc_to_conv(deploy, weights, crop, out_prototxt, out_caffemodel=None):
    """Library/CLI helper: the fully-convolutional deploy (and weights)."""
    net = load_net(deploy, weights)
    fc = fully_convolutional(deploy, net, crop, out_prototxt)
    if out_caffemodel:
        with atomic.atomic_path(out_caffemodel) as tmp:
            fc.save(tmp)
    return fc


# --------------------------------------------------------------------------
def _softmax(x, axis=1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _ends_in_softmax(deploy, blob):
    for l in protos.read_net(deploy).layer:
        if blob in l.top and l.type == "Softmax":
            return True
    return False


def _prep(img, mean, scale):
    x = img.astype(np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    return ((x - mean) * scale).transpose(2, 0, 1)


def topk_errors(scores, labels, k=5):
    """(top-1 %, top-k %, k used) with k = min(k, classes)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = float(np.mean(order[:, 0] != labels) * 100)
    topk = float(np.mean(~np.any(order[:, :k] == labels[:, None], axis=1)) * 100)
    return top1, topk, k


def _entries(db, train_subset, seed):
    """[(key, value)] to evaluate: all, or ``train_subset`` random ones.
    The LMDB is walked once in a forked child first (``data.walk``): a
    corrupt page then stops the child, not this process."""
    data.walk(db)
    if not train_subset:
        return data.iter_lmdb(db), None
    keys = [k for k, _ in data.iter_lmdb(db)]
    n = min(int(train_subset), len(keys))
    pick = np.random.RandomState(seed).choice(len(keys), n, replace=False)
    pick.sort()
    env = data.open_lmdb(db)

    def gen():
        try:
            with env.begin() as txn:
                for i in pick:
                    yield keys[i], txn.get(keys[i])
        finally:
            env.close()
    return gen(), n


def evaluate(deploy, weights, db, scheme="single-crop", shorter_edge=256, crop=224,
             mean=None, scale=1.0, train_subset=None, seed=0, batch_size=25,
             gpu=None, output=None, mirror=True, model=None, split=None,
             progress=True, return_scores=False, limit=None):
    """Top-1/top-5 error (%) of ``deploy``+``weights`` on the LMDB ``db``.
    ``scheme``: "single-crop" or "dense". ``train_subset``: N random entries
    (single crop; the paper's training error). Returns a result dict."""
    from tqdm import tqdm
    if scheme not in ("single-crop", "dense"):
        raise ReconDecError(f"unknown scheme '{scheme}' (single-crop or dense)")
    if shorter_edge < crop:
        raise ReconDecError(f"--shorter-edge: {shorter_edge} is smaller than the crop {crop}")
    want = check_inputs(deploy, crop, scheme)
    have = data.first_image(db)[0]
    if have != want[0]:
        raise ReconDecError(f"{db}: images with {have} channel{'s' * (have != 1)}, the net ({deploy}) takes "
                            f"{want[0]} (rebuild it with `recon-dec data build --channels {want[0]}`)")
    if gpu is not None:
        from ..caffe_io.tool import check_gpus
        check_gpus(str(gpu))
    if weights:
        protos.check_caffemodel_file(values.check_in_file(weights, "--weights", "caffemodel"))
    t0 = time.time()
    net = load_net(deploy, weights, gpu)
    inp = net.inputs[0]
    channels = net.blobs[inp].data.shape[1]
    out_blob = output or net.outputs[-1]
    if out_blob not in net.blobs:
        raise ReconDecError(f"{deploy}: no blob '{out_blob}'")
    probs = _ends_in_softmax(deploy, out_blob)
    meanv = parse_mean(mean, channels)
    color = channels == 3
    entries, n = _entries(db, train_subset, seed)
    total = n if n else (limit or data.check_lmdb(db))
    bar = tqdm(total=total, desc=f"{scheme} {os.path.basename(os.fspath(db).rstrip('/'))}",
               unit="img", disable=not progress or not values.stderr_tty(), dynamic_ncols=True)
    all_scores, labels = [], []
    tmpdir = None
    if scheme == "dense":
        tmpdir = tempfile.mkdtemp(prefix="recon-dec-fcn-")
        fc = fully_convolutional(deploy, net, crop, os.path.join(tmpdir, "fcn.prototxt"))

    def run_batch(batch):
        x = np.stack(batch)
        net.blobs[inp].reshape(*x.shape)
        net.blobs[inp].data[...] = x
        net.forward()
        s = net.blobs[out_blob].data.reshape(len(batch), -1).copy()
        return s if probs else _softmax(s)

    batch = []
    try:
        for count, (k, v) in enumerate(entries):
            if limit and count >= limit:
                break
            img, label = data.decode_value(v, color=color, where=f"{db}: key {k.decode(errors='replace')}")
            img = data.resize_shorter(img, shorter_edge)
            labels.append(label)
            if scheme == "single-crop" or train_subset:
                batch.append(_prep(data.centre_crop(img, crop), meanv, scale))
                if len(batch) == batch_size:
                    all_scores.append(run_batch(batch))
                    batch = []
            else:
                x = _prep(img, meanv, scale)
                xs = np.stack([x, x[:, :, ::-1]]) if mirror else x[None]
                fc.blobs[inp].reshape(*xs.shape)
                fc.blobs[inp].data[...] = xs
                fc.forward()
                s = fc.blobs[out_blob].data
                if not probs:
                    s = _softmax(s, axis=1)
                all_scores.append(s.mean(axis=(0, 2, 3))[None])
            bar.update(1)
        if batch:
            all_scores.append(run_batch(batch))
    finally:
        bar.close()
        if tmpdir:
            import shutil
            shutil.rmtree(tmpdir, ignore_errors=True)
    if not labels:
        raise ReconDecError(f"{db}: no images to evaluate")
    scores = np.concatenate(all_scores)
    top1, top5, k = topk_errors(scores, labels)
    secs = time.time() - t0
    result = {
        "format": FORMAT, "model": model, "split": split or ("train" if train_subset else "val"),
        "scheme": "single-crop" if train_subset else scheme, "n": len(labels),
        "classes": int(scores.shape[1]), "top1_error": top1, "top5_error": top5, "top5_k": k,
        "shorter_edge": shorter_edge, "crop": crop, "mirror": bool(mirror and scheme == "dense"),
        "deploy": os.path.abspath(deploy), "weights": os.path.abspath(weights) if weights else None,
        "db": os.path.abspath(os.fspath(db)), "seconds": round(secs, 3),
        "images_per_s": round(len(labels) / secs, 2) if secs else None,
    }
    if return_scores:
        result["scores"] = scores
        result["labels"] = np.asarray(labels)
    return result


# --------------------------------------------------------------------------
# population statistics of batch normalisation, recomputed after training
STATISTICS_LAYERS = {"BatchNorm": "batch_norm_param", "BatchStats": "batch_stats_param"}


def recompute_statistics(deploy, weights, db, out, batch_size=100, mean=None, scale=1.0):
    """Recomputes the running statistics of every BatchNorm / BatchStats
    layer of ``deploy`` over the images of ``db``, the weights fixed, and
    writes ``weights`` with them replaced to ``out`` (every other blob as it
    was). Each full batch is normalised with its own statistics, as in
    training, layer by layer, and the batches' means and unbiased variances
    are averaged (Caffe's moving average with fraction 1): the population
    statistics the official ladder code evaluates with, rather than the
    moving average of the last iterations. The last, incomplete batch is
    left out (a batch of other size would weigh as much as a full one);
    an LMDB smaller than ``batch_size`` is one batch. Returns
    {"images": used, "batches": n, "layers": [names]}."""
    caffe = _caffe()
    param = classifier_only(protos.read_net(deploy), deploy)
    layers = [l for l in param.layer if l.type in STATISTICS_LAYERS]
    if not layers:
        raise ReconDecError(f"{deploy}: no BatchNorm or BatchStats layer, so no statistics to recompute")
    shape = input_shape(deploy)
    if shape is None:
        raise ReconDecError(f"{deploy}: no Input layer with a N,C,H,W shape (a deploy prototxt is needed)")
    c, h, w = shape
    protos.check_caffemodel_file(values.check_in_file(weights, "--weights", "caffemodel"))
    total = data.check_lmdb(db)
    if total < 2:
        raise ReconDecError(f"{db}: one image; batch statistics need two or more")
    have = data.first_image(db)[0]
    if have != c:
        raise ReconDecError(f"{db}: images with {have} channel{'s' * (have != 1)}, the net ({deploy}) takes {c}")
    for l in layers:
        p = getattr(l, STATISTICS_LAYERS[l.type])
        p.use_global_stats = False
        p.moving_average_fraction = 1.0
    check_builds(deploy, param)
    caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(protos.to_text(param))
        f.flush()
        net = caffe.Net(f.name, caffe.TEST)
    load_weights(net, weights, deploy)
    for l in layers:
        for b in net.params[l.name]:
            b.data[...] = 0
    inp = net.inputs[0]
    batch_size = min(batch_size, total)
    net.blobs[inp].reshape(batch_size, c, h, w)
    meanv = parse_mean(mean, c)
    batch, batches = [], 0
    data.walk(db)  # a corrupt page stops a forked child first, not this process
    for k, v in data.iter_lmdb(db):
        img, _ = data.decode_value(v, where=f"{db}: key {k.decode(errors='replace')}")
        if img.shape[:2] != (h, w):
            raise ReconDecError(f"{db}: key {k.decode(errors='replace')}: a {img.shape[0]}x{img.shape[1]} "
                                f"image; the net ({deploy}) takes {h}x{w}")
        batch.append(_prep(img, meanv, scale))
        if len(batch) == batch_size:
            net.blobs[inp].data[...] = np.stack(batch)
            net.forward()
            batch, batches = [], batches + 1
    model = protos.read_caffemodel(weights)
    held = protos.caffemodel_layers(model)
    for l in layers:
        if l.name not in held:
            raise ReconDecError(f"{weights}: no blobs for layer '{l.name}' of {deploy}")
        for dst, src in zip(held[l.name].blobs, net.params[l.name]):
            del dst.data[:]
            dst.data.extend(src.data.ravel().tolist())
    atomic.write_bytes(out, model.SerializeToString())
    return {"images": batches * batch_size, "batches": batches, "batch_size": batch_size,
            "layers": [l.name for l in layers]}


def register(subparsers):
    p = subparsers.add_parser("eval", help="top-1/top-5 error: single-crop or dense")
    p.add_argument("--net", required=True, help="deploy prototxt")
    p.add_argument("--weights", required=True, help="caffemodel")
    p.add_argument("--db", required=True, help="LMDB of encoded images (recon-dec data build)")
    p.add_argument("--scheme", choices=["single-crop", "dense"], default="single-crop")
    p.add_argument("--train-subset", type=values.arg_int(1), metavar="N",
                   help="N random images of --db (training error; single crop)")
    p.add_argument("--seed", type=values.arg_int(0, 2 ** 32 - 1), default=0, help="for --train-subset")
    p.add_argument("--mean", default="103.939,116.779,123.68",
                   help="per-channel mean (BGR) values 'b,g,r', or a .binaryproto/.npy")
    p.add_argument("--scale", type=values.arg_float(0, values.FLT_MAX, low_open=True), default=1.0)
    p.add_argument("--shorter-edge", type=values.arg_int(1, values.MAX_IMAGE_SIDE), default=256)
    p.add_argument("--crop", type=values.arg_int(1, values.MAX_IMAGE_SIDE), default=224)
    p.add_argument("--batch-size", type=values.arg_int(1, 65536), default=25)
    p.add_argument("--output", help="score blob (default: the net's last output)")
    p.add_argument("--model", help="model name for the table, e.g. the variant evaluated")
    p.add_argument("--gpu", type=values.arg_int(0, 1023))
    p.add_argument("--limit", type=values.arg_int(1), help="evaluate only the first N images")
    p.add_argument("--out", help="results JSON to write")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser(
        "recompute-stats", help="batch-normalisation statistics recomputed over a training LMDB",
        description="Writes --weights with the running statistics of every BatchNorm/BatchStats layer of "
                    "--net replaced by their averages over the full batches of --db (weights fixed, each "
                    "batch normalised with its own statistics, as in training).")
    p.add_argument("--net", required=True, help="deploy prototxt")
    p.add_argument("--weights", required=True, help="caffemodel")
    p.add_argument("--db", required=True, help="LMDB of the training images (labels unused)")
    p.add_argument("--out", required=True, help="caffemodel to write")
    p.add_argument("--batch-size", type=values.arg_int(2, 65536), default=100,
                   help="the training batch size (default 100, the ladder's)")
    p.add_argument("--mean", default=None, help="per-channel mean, as for eval (default none)")
    p.add_argument("--scale", type=values.arg_float(0, values.FLT_MAX, low_open=True), default=1.0,
                   help="the training data layer's transform_param scale (e.g. 0.00392157)")
    p.set_defaults(func=_cmd_recompute_stats)


def _cmd_eval(args):
    if args.out is not None:
        values.check_out_file(args.out)
    r = evaluate(args.net, args.weights, args.db, args.scheme, args.shorter_edge, args.crop,
                 args.mean, args.scale, args.train_subset, args.seed, args.batch_size,
                 args.gpu, args.output, model=args.model, progress=not args.no_progress,
                 limit=args.limit)
    text = json.dumps(r, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    print(f"{r['split']} {r['scheme']}: top-1 error {r['top1_error']:.2f}%, "
          f"top-{r['top5_k']} error {r['top5_error']:.2f}% on {r['n']} images")


def _cmd_recompute_stats(args):
    values.check_out_file(args.out)
    r = recompute_statistics(args.net, args.weights, args.db, args.out, args.batch_size, args.mean, args.scale)
    print(f"{args.out}: statistics of {len(r['layers'])} layers over {r['images']} images "
          f"({r['batches']} batches of {r['batch_size']})")
