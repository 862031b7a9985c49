"""LLM-VEM (Ma et al. 2024, arXiv 2401.03851) as a neuroenc plugin set.

"Aligned with LLM: a new multi-modal training paradigm for encoding fMRI activity in
visual cortex": a vision-language model (miniGPT-4) describes every stimulus image, a
CLIP text encoder embeds the description, and an EVA02 image backbone with a PCA-based
voxel-mapping head is trained to predict fMRI while a contrastive loss with a small
weight lambda pulls its image embedding towards the text embedding, in two stages.

Each part is a component of its kind, usable on its own in other compositions:

=================  =====================================================
captioner          ``minigpt4``, ``dataset-captions``, ``caption-file``
text_encoder       ``clip``, ``sentence-transformers``
image_backbone     ``eva02``
voxel_mapper       ``pca-head``, ``gaussian-head``
alignment_loss     ``contrastive``
recipe             ``llm-vem`` (the two-stage trainer)
=================  =====================================================

Registered through the ``neuroenc`` entry-point group (name ``llm-vem``) of neuroenc's
own pyproject.toml, as a third-party package would. See docs/llm-vem.md for which
choices come from the paper and which are our assumptions.
"""

from __future__ import annotations

import neuroenc
from neuroenc import hookimpl

from . import backbones, captioners, gaussian_head, heads, losses, recipe, text_encoders

__version__ = neuroenc.__version__


@hookimpl
def neuroenc_captioners():
    return captioners.COMPONENTS


@hookimpl
def neuroenc_text_encoders():
    return text_encoders.COMPONENTS


@hookimpl
def neuroenc_image_backbones():
    return backbones.COMPONENTS


@hookimpl
def neuroenc_voxel_mappers():
    return heads.COMPONENTS + gaussian_head.COMPONENTS


@hookimpl
def neuroenc_alignment_losses():
    return losses.COMPONENTS


@hookimpl
def neuroenc_recipes():
    return recipe.COMPONENTS
