"""``recon-dec plot LOG``: each loss head and accuracy of a Caffe training
log against the iteration (matplotlib, Agg)."""
import os

from .. import atomic, values
from ..caffe_io.logs import parse_log
from ..errors import ReconDecError


def plot_log(log, out=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = parse_log(log)
    if not curves["train"] and not curves["test"]:
        raise ReconDecError(f"{log}: no 'Train net output' or 'Test net output' lines (not a caffe train log?)")
    out = out or os.path.splitext(log)[0] + ".png"
    losses = [("train", k, v) for k, v in curves["train"].items() if "acc" not in k]
    losses += [("test", k, v) for k, v in curves["test"].items() if "acc" not in k]
    accs = [("train", k, v) for k, v in curves["train"].items() if "acc" in k]
    accs += [("test", k, v) for k, v in curves["test"].items() if "acc" in k]
    fig, axes = plt.subplots(1, 2 if accs else 1, figsize=(12 if accs else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for split, k, v in losses:
        ax.plot([a for a, _ in v], [b for _, b in v], label=f"{split} {k}",
                linestyle="-" if split == "train" else "--", marker=None if len(v) > 1 else "o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(os.path.basename(log))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if accs:
        ax = axes[0][1]
        for split, k, v in accs:
            ax.plot([a for a, _ in v], [b for _, b in v], label=f"{split} {k}",
                    marker=None if len(v) > 1 else "o")
        ax.set_xlabel("iteration")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def register(subparsers):
    p = subparsers.add_parser("plot", help="plot loss heads and accuracy from a caffe log")
    p.add_argument("log")
    p.add_argument("--out", help="PNG to write (default: LOG with .png)")
    p.set_defaults(func=_cmd)


def _cmd(a):
    values.check_out_file(a.out or os.path.splitext(a.log)[0] + ".png")
    print(plot_log(a.log, a.out))
