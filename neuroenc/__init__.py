"""neuroenc: image-computable encoding models of human visual cortex.

The extension surface is declared in :mod:`neuroenc.hookspecs`; built-in components
(the baselines and LLM-VEM) are plugins under ``plugins/`` registered through the same
``neuroenc`` entry-point group a third-party package uses.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroenc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]

from neuroenc.hookspecs import hookimpl  # noqa: E402  (the decorator plugin authors use)
from neuroenc.records import Component, NoParams, Slot  # noqa: E402

__all__ += ["hookimpl", "Component", "NoParams", "Slot"]

from neuroenc import _moved  # noqa: E402

_moved.install()  # 0.1 module paths keep importing (docs/changelog.md)


def __getattr__(name: str):
    # load_encoder imports torch; keep `import neuroenc` light for plugin discovery.
    if name == "load_encoder":
        from neuroenc.core.encoders import load_encoder

        return load_encoder
    raise AttributeError(f"module 'neuroenc' has no attribute {name!r}")
