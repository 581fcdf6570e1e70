"""`recon-dec` command line: a thin layer over the library. Each sub-command
lives in its own module, which exposes ``register(subparsers)``; the parser it
adds sets ``func`` to a callable taking the parsed arguments."""
import argparse
import importlib
import os
import sys

from .errors import ReconDecError

# module name under recon_dec/ for each sub-command, in --help order
COMMANDS = [
    "runners.generate",
    "data.store",
    "runners.train",
    "experiments.plot",
    "runners.evaluate",
    "experiments.report",
    "experiments.demo",
    "experiments.semi",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="recon-dec",
        description="Augment Caffe classifiers with reconstruction decoders "
                    "(Zhang, Lee & Lee, ICML 2016): generate, train, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"recon_dec.{name}").register(sub)
    return parser


def main(argv=None):
    # Caffe's glog chatter is noise for a CLI user unless asked for.
    os.environ.setdefault("GLOG_minloglevel", "2")
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ReconDecError as e:
        print(f"recon-dec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recon-dec: interrupted", file=sys.stderr)
        return 130
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
