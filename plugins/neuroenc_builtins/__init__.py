"""neuroenc's built-in components, registered like any third-party plugin.

This package is advertised in the ``neuroenc`` entry-point group of neuroenc's own
``pyproject.toml`` (entry-point name ``builtins``), exactly as an external package
would advertise its plugin; it is the worked example of how to write one. Each hook
returns :class:`neuroenc.Component` records.
"""

from __future__ import annotations

import neuroenc
from neuroenc import hookimpl

from . import backbones, datasets, ensemble, fwrf, mappers, metrics, recipes

__version__ = neuroenc.__version__


@hookimpl
def neuroenc_datasets():
    return datasets.COMPONENTS


@hookimpl
def neuroenc_image_backbones():
    return backbones.COMPONENTS


@hookimpl
def neuroenc_voxel_mappers():
    return mappers.COMPONENTS + fwrf.COMPONENTS


@hookimpl
def neuroenc_metrics():
    return metrics.COMPONENTS


@hookimpl
def neuroenc_recipes():
    return recipes.COMPONENTS + ensemble.COMPONENTS
