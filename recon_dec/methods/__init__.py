"""Methods: each module defines a ``Method`` (its variants, stages,
constants and nets) and registers it. A new method is one module and a
``register`` call; the generic code (runners/generate.py) never names one.

    from recon_dec import methods
    methods.register(MyMethod())
    methods.get("my-method")
"""
import importlib

from ..errors import ReconDecError
from .base import Context, Init, Method, Stage, Variant

__all__ = ["Context", "Init", "Method", "Stage", "Variant", "register", "get", "all_methods"]

# modules of the methods that ship with recon-dec; each calls register()
BUILTIN = ("swwae", "autoencoder", "inversion", "ladder")
DEFAULT = "swwae"
_registry = {}


def register(method):
    """Makes ``method`` (a Method instance) available by its name."""
    if not isinstance(method, Method) or not method.name:
        raise TypeError("register() takes a Method instance with a name")
    _registry[method.name] = method
    return method


def _load_builtin():
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")


def get(name):
    _load_builtin()
    try:
        return _registry[name]
    except KeyError:
        raise ReconDecError(f"--method: unknown method {name!r} (one of {', '.join(sorted(_registry))})") from None


def all_methods():
    _load_builtin()
    return dict(_registry)
