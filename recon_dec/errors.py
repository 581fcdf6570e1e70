"""The one exception type the CLI turns into a one-line message."""


class ReconDecError(Exception):
    """A user-facing error. The message names the file and, where there is
    one, the layer: ``path/to/net.prototxt: layer 'conv3_1': ...``."""


def where(path, layer=None):
    """Prefix for error messages: ``FILE: layer 'NAME': ``."""
    prefix = f"{path}: " if path else ""
    return prefix + (f"layer '{layer}': " if layer else "")
