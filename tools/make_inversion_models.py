"""Writes models/inversion/*.prototxt: the networks of Balestriero et al.'s
MNIST experiments (PAPER_FACTS 4) at the parameter counts of the paper's
appendix (SmallCNN 131K, LargeCNN 1,370K, Resnet2-32 330K), each with max
and with mean pooling. The paper gives counts, not layers: the layers are
our choice, printed with their counts. Run from the repository root."""
import pathlib

OUT = pathlib.Path("models/inversion")


def conv(name, bottom, n, k=3, pad=1):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} }} }}\n')


def relu(name, blob):
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def pool(name, bottom, kind):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: {kind} kernel_size: 2 stride: 2 }} }}\n')


def fc(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"\n'
            f'  inner_product_param {{ num_output: {n} }} }}\n')


def header(name):
    return (f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n')


def small(kind):   # 832 + 51,264 + 78,425 + 260 = 130,781
    return (header("SmallCNN") + conv("conv1", "data", 32, 5, 2) + relu("relu1", "conv1") + pool("pool1", "conv1", kind)
            + conv("conv2", "pool1", 64, 5, 2) + relu("relu2", "conv2") + pool("pool2", "conv2", kind)
            + fc("fc3", "pool2", 25) + relu("relu3", "fc3") + fc("fc4", "fc3", 10))


def large(kind):   # 1,370,256
    s = header("LargeCNN")
    s += conv("conv1a", "data", 64) + relu("relu1a", "conv1a") + conv("conv1b", "conv1a", 64) + relu("relu1b", "conv1b")
    s += pool("pool1", "conv1b", kind)
    s += conv("conv2a", "pool1", 128) + relu("relu2a", "conv2a") + conv("conv2b", "conv2a", 128) + relu("relu2b", "conv2b")
    s += pool("pool2", "conv2b", kind)
    s += conv("conv3a", "pool2", 256) + relu("relu3a", "conv3a") + conv("conv3b", "conv3a", 256) + relu("relu3b", "conv3b")
    return s + fc("fc4", "conv3b", 18) + relu("relu4", "fc4") + fc("fc5", "fc4", 10)


def block(name, x, n):
    """y = relu(x + conv(relu(conv(x))))."""
    s = conv(f"{name}a", x, n) + relu(f"{name}a/relu", f"{name}a") + conv(f"{name}b", f"{name}a", n)
    s += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "{x}" bottom: "{name}b" top: "{name}"\n'
          '  eltwise_param { operation: SUM } }\n')
    return s + relu(f"{name}/relu", name)


def resnet(kind):  # 330,362: widths 32 and 80, two blocks each
    s = header("Resnet2-32") + conv("conv0", "data", 32) + relu("relu0", "conv0")
    s += block("res1a", "conv0", 32) + block("res1b", "res1a", 32) + pool("pool1", "res1b", kind)
    s += conv("conv2", "pool1", 80) + relu("relu2", "conv2")
    s += block("res2a", "conv2", 80) + block("res2b", "res2a", 80) + pool("pool2", "res2b", kind)
    return s + fc("fc3", "pool2", 10)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in (("smallcnn", small), ("largecnn", large), ("resnet2_32", resnet)):
        for kind, suffix in (("MAX", "max"), ("AVE", "mean")):
            (OUT / f"{name}_{suffix}.prototxt").write_text(
                f"# Written by tools/make_inversion_models.py ({name}, {suffix} pooling).\n" + make(kind))
