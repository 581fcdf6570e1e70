"""Figures of the demo: reconstructions from each macro-layer with fixed vs
known switches (the paper's Figure 5), and training curves."""
import glob
import os

import numpy as np

from .. import atomic
from ..errors import ReconDecError
from . import plot

N_SHOWN = 10


def reconstruct(deploy, weights, images, mean):
    """dec:data of an inversion net for uint8 images [N, H, W] (grayscale),
    back in pixel units, and the mean squared error against the input, both
    on the paper's scale (image / 255)."""
    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST, weights=weights)
    n = net.blobs["data"].data.shape[0]
    outs = []
    for start in range(0, len(images), n):
        batch = images[start:start + n].astype(np.float32) - mean
        net.blobs["data"].reshape(len(batch), 1, *images.shape[1:])
        net.blobs["data"].data[:, 0] = batch
        net.forward()
        outs.append(net.blobs["dec:data"].data[:, 0].copy())
    rec = np.concatenate(outs)  # approximates (image - mean) / 255
    target = (images.astype(np.float32) - mean) / 255.0
    mse = float(np.mean((rec - target) ** 2))
    return np.clip(rec * 255.0 + mean, 0, 255), mse


def reconstruction_figure(nets, images, mean, out_png):
    """Rows: val digits. Columns: the input, then per macro-layer the
    reconstruction with fixed and with known switches. Returns the MSE per
    mode and macro-layer (on all ``images``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = sorted(nets["known"])
    mse = {"fixed": [], "known": []}
    columns = [("input", images)]
    for k in ks:
        for mode in ("fixed", "known"):
            rec, err = reconstruct(*nets[mode][k], images, mean)
            mse[mode].append(err)
            columns.append((f"layer {k}\n{mode}", rec))
    fig, axes = plt.subplots(N_SHOWN, len(columns), figsize=(1.3 * len(columns), 1.3 * N_SHOWN + 0.6))
    for j, (title, imgs) in enumerate(columns):
        axes[0, j].set_title(title, fontsize=8)
        for i in range(N_SHOWN):
            axes[i, j].imshow(imgs[i], cmap="gray", vmin=0, vmax=255)
            axes[i, j].axis("off")
    fig.suptitle("Reconstructions from each macro-layer: fixed (SAE) vs known (SWWAE) switches", fontsize=9)
    fig.tight_layout()
    with atomic.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return mse


def curves(root, out_dir):
    """A PNG of the loss heads and accuracies of every caffe log under root."""
    written = []
    for log in sorted(glob.glob(os.path.join(root, "**", "logs", "*.log"), recursive=True)):
        rel = os.path.relpath(log, root).replace(os.sep, "_").replace("_logs_", "_")
        out = os.path.join(out_dir, os.path.splitext(rel)[0] + ".png")
        try:
            plot.plot_log(log, out)
        except ReconDecError:
            continue  # a log without output lines (e.g. a zero-iteration stage)
        written.append(os.path.relpath(out, root))
    return written
