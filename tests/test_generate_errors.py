"""Bad inputs: the CLI returns 2 with ONE line naming the file and the
layer, and writes nothing."""
import pytest

from generate_helpers import SMALL, VGG16
from recon_dec import cli

HEAD = 'name: "bad"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }\n'


def conv(name, bottom, top=None, k=3, pad=1, stride=1, n=8):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} stride: {stride} }} }}\n')


POOL = 'layer { name: "pool1" type: "Pooling" bottom: "%s" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'

BAD = {
    "unknown-type": (HEAD + conv("conv1", "data")
                     + 'layer { name: "weird1" type: "Sigmoid" bottom: "conv1" top: "conv1" }\n', "weird1"),
    "concat": (HEAD + conv("conv1", "data") + conv("conv2", "data")
               + 'layer { name: "cat" type: "Concat" bottom: "conv1" bottom: "conv2" top: "cat" }\n', "conv2"),
    "top-read-twice": (HEAD + conv("conv1", "data") + conv("conv2", "conv1") + conv("conv3", "conv1"), "conv3"),
    # a strided first conv whose transposed convolution gives 15x15, not 16x16
    "cannot-mirror-size": (HEAD + conv("conv1", "data", k=3, pad=0, stride=2) + POOL % "conv1", "conv1"),
    "cannot-mirror-stride": (HEAD + conv("conv1", "data") + conv("conv2", "conv1", stride=2) + POOL % "conv2",
                             "conv2"),
    "avg-pool": (HEAD + conv("conv1", "data")
                 + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n',
                 "pool1"),
}


def _run(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_net_exits_2_with_one_line(tmp_path, capsys, case):
    text, layer = BAD[case]
    net = tmp_path / "bad.prototxt"
    net.write_text(text)
    out = tmp_path / "out"
    rc, err = _run(capsys, ["generate", "--net", str(net), "--variant", "all", "--out", str(out)])
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert str(net) in err and f"layer '{layer}'" in err, err
    assert not out.exists()


def test_unreadable_file(tmp_path, capsys):
    missing = tmp_path / "nope.prototxt"
    out = tmp_path / "out"
    rc, err = _run(capsys, ["generate", "--net", str(missing), "--variant", "swwae-all", "--out", str(out)])
    assert rc == 2 and len(err.splitlines()) == 1 and str(missing) in err
    garbage = tmp_path / "garbage.prototxt"
    garbage.write_text("layer { name: \n")
    rc, err = _run(capsys, ["generate", "--net", str(garbage), "--variant", "swwae-all", "--out", str(out)])
    assert rc == 2 and len(err.splitlines()) == 1 and str(garbage) in err
    assert not out.exists()


def test_missing_weights(tmp_path, capsys):
    out = tmp_path / "out"
    w = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    rc, err = _run(capsys, ["generate", "--net", VGG16, "--variant", "all", "--out", str(out), "--weights", str(w)])
    assert rc == 2 and len(err.splitlines()) == 1 and str(w) in err
    assert not out.exists()


def test_bad_option_values_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    for extra in (["--max-iter", "7=10"], ["--mean", "1,2"], ["--variant", "nope"], ["--lr-policy", "4=cosine"]):
        rc, err = _run(capsys, ["generate", "--net", SMALL, "--variant", "sae-all", "--out", str(out)] + extra)
        assert rc == 2 and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for opt in ("--net", "--variant", "--out", "--weights", "--data", "--train-source", "--val-source",
                "--batch", "--iter-size", "--mean", "--crop", "--draw", "--base-lr", "--max-iter",
                "--input-size", "--step2-lr", "--loss-weight"):
        assert opt in text


def test_small_vgg_imagelist_grayscale(tmp_path, capsys):
    out = tmp_path / "out"
    lst = tmp_path / "train.txt"
    rc = cli.main(["generate", "--net", SMALL, "--variant", "swwae-all", "--out", str(out), "--data", "imagelist",
                   "--train-source", str(lst), "--mean", "33.3", "--scale", "1", "--batch", "4=32",
                   "--iter-size", "4=1", "--max-iter", "2=100", "--no-recon"])
    assert rc == 0
    text = (out / "swwae-all" / "step4" / "train_val.prototxt").read_text()
    assert 'type: "ImageData"' in text and "mean_value: 33.3" in text and "is_color: false" in text
    assert f'source: "{lst}"' in text and "batch_size: 32" in text
    assert "max_iter: 100" in (out / "swwae-all" / "step2" / "solver.prototxt").read_text()
    assert not (out / "recon").exists()
