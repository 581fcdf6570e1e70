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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other error of
    the command: the usage is for --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def build_parser():
    parser = Parser(
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
        return _fail(str(e))
    except KeyboardInterrupt:
        print("recon-dec: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's word on a path: full disk, permissions, ...
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except MemoryError:
        return _fail("out of memory")
    except Exception as e:  # a bug: still one line; RECON_DEC_DEBUG=1 shows the traceback
        if os.environ.get("RECON_DEC_DEBUG"):
            raise
        print(f"recon-dec: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(a bug; RECON_DEC_DEBUG=1 shows where)", file=sys.stderr)
        return 1
    return result or 0


def _fail(message):
    """The one line of a user-facing error; exit status 2."""
    print(f"recon-dec: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
