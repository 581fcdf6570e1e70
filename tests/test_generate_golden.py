"""The generator's output is a contract: the nets, solvers and stage
solvers of every variant must stay the same protobuf messages as those of
the reference snapshot (tests/golden/generate.json), taken before the
method/graph-builder redesign. Each file is compared by the SHA-256 of its
parsed message serialised deterministically, so formatting may change but
no field, value or layer may.

Re-take the snapshot only for an intended change of the generated nets:
    .venv/bin/python tests/test_generate_golden.py --write
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "generate.json"

# name -> generate arguments (paths relative to the repo; sources are
# absolute fake paths, so the output does not depend on the working directory)
CASES = {
    "vgg16": ["--net", "models/vgg16/deploy.prototxt", "--variant", "all"],
    "alexnet": ["--net", "models/alexnet/deploy.prototxt", "--variant", "all"],
    "small_vgg": ["--net", "recon_dec/models/small_vgg/deploy.prototxt", "--variant", "all"],
    "vgg16_v1_jitter": ["--net", "models/vgg16/deploy_v1.prototxt", "--variant", "swwae-all",
                        "--variant", "sae-layerwise", "--data", "scale-jitter",
                        "--train-source", "/data/train_lmdb", "--val-source", "/data/val_lmdb",
                        "--input-size", "64", "--scale-range", "72,96", "--test-size", "80",
                        "--threads", "2", "--no-recon"],
    "alexnet_lrn_list": ["--net", "models/alexnet/deploy_lrn.prototxt", "--variant", "swwae-first",
                         "--variant", "baseline", "--data", "imagelist", "--train-source", "/data/train.txt",
                         "--val-source", "/data/val.txt", "--root-folder", "/data/images",
                         "--resize", "256", "--square-size", "256", "--mean", "104,117,123",
                         "--scale", "0.5", "--crop", "227", "--no-mirror", "--deploy-batch", "2"],
    "small_vgg_options": ["--net", "recon_dec/models/small_vgg/deploy.prototxt", "--variant", "all",
                          "--train-source", "/data/train_lmdb", "--val-source", "/data/val_lmdb",
                          "--mean", "33.3", "--crop", "32", "--no-mirror", "--test-batch", "100",
                          "--test-iter", "10", "--test-interval", "1000", "--solver-mode", "CPU",
                          "--batch", "4=64", "--batch", "recon=8", "--iter-size", "1",
                          "--max-iter", "2=250", "--max-iter", "4=500", "--base-lr", "3=6.802721e-07",
                          "--lr-policy", "4=step", "--stepsize", "4=100", "--gamma", "0.5",
                          "--lr-policy", "3=inv", "--weight-decay", "4=1e-3", "--snapshot", "100000",
                          "--random-seed", "3", "--step2-lr", "1=1e-3", "--step2-lr", "3=3e-4",
                          "--loss-weight", "0=0.0147", "--loss-weight", "2=1.47e-10",
                          "--recon-points", "layer"],
}


def _digest(path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    msg = caffe_pb2.SolverParameter() if path.name.startswith("solver") else caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), msg)
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()


def snapshot(case, out):
    """{relative path: digest} of every prototxt generated for ``case``."""
    cmd = [sys.executable, "-m", "recon_dec.cli", "generate", *CASES[case], "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = pathlib.Path(out)
    return {str(p.relative_to(out)): _digest(p) for p in sorted(out.rglob("*.prototxt"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_nets_unchanged(case, tmp_path):
    want = json.loads(GOLDEN.read_text())[case]
    got = snapshot(case, tmp_path / case)
    assert sorted(got) == sorted(want), "generated file set changed"
    changed = [p for p in want if got[p] != want[p]]
    assert not changed, f"{len(changed)} generated files differ from the snapshot: {changed[:10]}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        golden = {c: snapshot(c, os.path.join(tmp, c)) for c in sorted(CASES)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN}: {sum(len(v) for v in golden.values())} files in {len(golden)} cases")
