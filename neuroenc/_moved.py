"""Old module paths (neuroenc 0.1) that still import, with a DeprecationWarning.

neuroenc 0.2 grouped its modules into packages by domain (docs/changelog.md). A plugin
written against 0.1 (``from neuroenc.features import extract_features``) keeps working:
the old name is an alias of the module at its new place (the same module object, so
monkeypatching either name patches both).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module
MOVED = {
    "neuroenc.config": "neuroenc.core.config",
    "neuroenc.plugins": "neuroenc.core.plugins",
    "neuroenc.context": "neuroenc.core.context",
    "neuroenc.cache": "neuroenc.core.cache",
    "neuroenc.runner": "neuroenc.core.runner",
    "neuroenc.features": "neuroenc.stimuli.features",
    "neuroenc.captions": "neuroenc.stimuli.captions",
    "neuroenc.text_features": "neuroenc.stimuli.text_features",
    "neuroenc.ridge": "neuroenc.models.ridge",
    "neuroenc.metrics": "neuroenc.evaluation.metrics",
    "neuroenc.results": "neuroenc.evaluation.results",
    "neuroenc.analysis": "neuroenc.evaluation.analysis",
    "neuroenc.plotting": "neuroenc.viz.plotting",
    "neuroenc.report": "neuroenc.viz.report",
    "neuroenc.cli_analysis": "neuroenc.cli.analysis",
    "neuroenc.data.algonauts": "neuroenc_builtins.algonauts",
    "neuroenc.data.demo": "neuroenc_builtins.demo",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new} in neuroenc 0.2; import it from there "
                      "(docs/changelog.md)", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """Nothing to run: the module was executed at its new place."""


def install() -> None:
    """Make the old names importable (idempotent)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
