"""Baseline encoding models for neuroenc, written on the public plugin API.

=================  ===========================================================
image_backbone     ``torchvision-alexnet``: torchvision AlexNet, the Algonauts
                   devkit's layers and preprocessing
voxel_mapper       ``devkit-pca-linear``: StandardScaler -> PCA(100) ->
                   per-vertex LinearRegression, as the devkit fits them
recipe             ``devkit``: the Algonauts 2023 devkit baseline (AlexNet ->
                   StandardScaler -> PCA(100) -> LinearRegression)
recipe             ``text-ridge``: caption embeddings -> per-vertex ridge (no
                   image pixels reach the model)
recipe             ``variance-partitioning``: image features + caption embeddings;
                   per vertex the unique image, unique text and shared variance
                   (R^2 on the scored split), with a banded ridge for the joint model
recipe             ``image-text-ridge``: that joint model as a model of its own,
                   its grid holding both single-band models
=================  ===========================================================

Registered through the ``neuroenc`` entry-point group (name ``baselines``), as a
third-party package would be. Each module's docstring says what follows its source
exactly and what is a choice of ours; docs/analysis.md shows how to use them.
"""

from __future__ import annotations

import neuroenc
from neuroenc import hookimpl

from . import devkit, image_text, text

__version__ = neuroenc.__version__


@hookimpl
def neuroenc_image_backbones():
    return devkit.BACKBONES


@hookimpl
def neuroenc_voxel_mappers():
    return devkit.MAPPERS


@hookimpl
def neuroenc_recipes():
    return devkit.RECIPES + text.RECIPES + image_text.RECIPES
