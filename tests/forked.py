"""Child processes forked from a server that has imported neuroenc, torch and timm once.

A fresh interpreter spends seconds importing torch; tests that need real separate
processes (SIGKILL, two runs on one cache) fork them from this server instead. The
server only imports (it never runs torch code), so forking it is safe. multiprocessing
keeps one fork server per test session, shared by every test that uses it.
"""

from __future__ import annotations

import multiprocessing

PRELOAD = ["neuroenc.cli", "neuroenc.core.runner", "neuroenc.stimuli.features", "neuroenc.core.plugins",
           "neuroenc_builtins", "neuroenc_builtins.backbones", "neuroenc_llmvem",
           "neuroenc_baselines", "torch", "timm", "xarray", "h5netcdf", "h5py", "pandas",
           "scipy", "sklearn", "PIL.Image"]


def context():
    """Return the forkserver multiprocessing context, preloading :data:`PRELOAD`."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
