"""``recon-dec table``: Table 1 of the paper (ILSVRC-2012 % error) with our
results beside the paper's and the difference; mean +- std over several
results (seeds) per model."""
import csv
import io
import json
import os

import numpy as np

from .. import atomic, values
from ..caffe_io.protos import read_text_file
from ..errors import ReconDecError

MODELS = ["baseline", "sae-first", "sae-all", "sae-layerwise",
          "swwae-first", "swwae-all", "swwae-layerwise"]
MODEL_LABEL = {"baseline": "VGGNet (baseline)", "sae-first": "SAE-first", "sae-all": "SAE-all",
               "sae-layerwise": "SAE-layerwise", "swwae-first": "SWWAE-first",
               "swwae-all": "SWWAE-all", "swwae-layerwise": "SWWAE-layerwise"}
# (split, scheme, metric) for each column, in the paper's order
COLUMNS = [("train", "single-crop", "top1_error", "single-crop top-1 train"),
           ("val", "single-crop", "top1_error", "single-crop top-1 val"),
           ("train", "single-crop", "top5_error", "single-crop top-5 train"),
           ("val", "single-crop", "top5_error", "single-crop top-5 val"),
           ("val", "dense", "top1_error", "conv. top-1 val"),
           ("val", "dense", "top5_error", "conv. top-5 val")]
# PAPER_FACTS.md, Table 1 (ILSVRC-2012, % error)
PAPER = {
    "baseline":        [17.43, 29.05, 4.02, 10.07, 26.97, 8.94],
    "sae-first":       [15.36, 27.70, 3.13, 9.28, 26.09, 8.30],
    "sae-all":         [15.64, 27.54, 3.23, 9.17, 26.10, 8.21],
    "sae-layerwise":   [16.20, 27.60, 3.42, 9.19, 26.06, 8.17],
    "swwae-first":     [15.10, 27.60, 3.08, 9.23, 25.87, 8.14],
    "swwae-all":       [15.67, 27.39, 3.24, 9.06, 25.79, 8.13],
    "swwae-layerwise": [15.42, 27.53, 3.32, 9.10, 25.97, 8.20],
}


def _load(r):
    if isinstance(r, dict):
        return r
    try:
        d = json.loads(read_text_file(r, "results JSON"))
    except ValueError:
        raise ReconDecError(f"{r}: not a results JSON") from None
    if not isinstance(d, dict) or "top1_error" not in d:
        raise ReconDecError(f"{r}: not a recon-dec eval result (no top1_error)")
    for i, (_, _, metric, _) in enumerate(COLUMNS):
        v = d.get(metric)
        if metric in d and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
            raise ReconDecError(f"{r}: {metric} is {v!r}, not a percentage")
    for k in ("model", "split", "scheme"):
        if d.get(k) is not None and not isinstance(d[k], str):
            raise ReconDecError(f"{r}: '{k}' is {d[k]!r}, not a string")
    if not d.get("model"):
        # fall back on the directory name: OUT/<variant>/...
        parts = os.path.abspath(r).split(os.sep)
        d["model"] = next((p for p in reversed(parts) if p in MODELS), None)
        if not d["model"]:
            raise ReconDecError(f"{r}: no 'model' (pass --model to recon-dec eval)")
    return d


def collect(results):
    """-> {model: {column index: [values]}}"""
    cells = {}
    for r in results:
        d = _load(r)
        model = d["model"]
        for i, (split, scheme, metric, _) in enumerate(COLUMNS):
            if d.get("split") == split and d.get("scheme") == scheme:
                cells.setdefault(model, {}).setdefault(i, []).append(float(d[metric]))
    return cells


def _stat(vals):
    if not vals:
        return None, None, 0
    a = np.asarray(vals, float)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None), int(a.size)


def table(results, out_dir=None):
    """Markdown of Table 1: each cell 'ours [± std] (paper, diff)'; writes
    table1.md and table1.csv into ``out_dir`` if given. Returns the markdown."""
    cells = collect(results)
    if not cells:
        raise ReconDecError("no results to tabulate")
    models = [m for m in MODELS if m in cells] + sorted(m for m in cells if m not in MODELS)
    md = ["| model | " + " | ".join(c[3] for c in COLUMNS) + " |",
          "|---|" + "---|" * len(COLUMNS)]
    rows = []
    for m in models:
        line = [MODEL_LABEL.get(m, m)]
        for i in range(len(COLUMNS)):
            mean, std, n = _stat(cells[m].get(i, []))
            paper = PAPER.get(m, [None] * 6)[i]
            diff = mean - paper if mean is not None and paper is not None else None
            rows.append({"model": m, "column": COLUMNS[i][3], "split": COLUMNS[i][0],
                         "scheme": COLUMNS[i][1], "metric": COLUMNS[i][2],
                         "ours_mean": mean, "ours_std": std, "n": n, "paper": paper, "diff": diff})
            if mean is None:
                line.append("–" + (f" ({paper:.2f})" if paper is not None else ""))
                continue
            txt = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
            if paper is not None:
                txt += f" ({paper:.2f}, {diff:+.2f})"
            line.append(txt)
        md.append("| " + " | ".join(line) + " |")
    md.append("")
    md.append("Cells: ours (mean ± std over seeds where several) (paper, ours − paper); % error.")
    text = "\n".join(md) + "\n"
    if out_dir:
        atomic.write_text(os.path.join(out_dir, "table1.md"), text)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v))
                        for k, v in r.items()})
        atomic.write_text(os.path.join(out_dir, "table1.csv"), buf.getvalue())
    return text


def register(subparsers):
    p = subparsers.add_parser("table", help="Table 1 (paper beside ours) from eval results")
    p.add_argument("results", nargs="+", help="results JSON files from recon-dec eval")
    p.add_argument("--out", help="directory for table1.md and table1.csv")
    p.set_defaults(func=_cmd)


def _cmd(a):
    if a.out is not None:
        values.check_out_dir(a.out)
    print(table(a.results, a.out), end="")
