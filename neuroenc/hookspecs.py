"""The extension surface of neuroenc: every hook a plugin can implement.

A plugin is any module (or object) with functions decorated by ``neuroenc.hookimpl``
whose names match the hooks below. It is found through the ``neuroenc`` entry-point
group of an installed package, or named in registry.yaml (``plugins:``) as an importable
module or a ``.py`` file. The built-in components under ``plugins/`` use the same path.

Every hook is called without arguments when the plugin manager first needs components
of that kind (to validate a registry, to run it, or for ``neuroenc plugins``). Each
implementation returns a list of :class:`neuroenc.records.Component` records; the
manager stamps them with kind, provider and version, and rejects two components of one
kind with the same name, naming both providers. An implementation that raises or
returns something else is reported as a broken plugin (a warning, or an error under
``--strict``) and the other plugins still load.

What ``Component.factory(params, context)`` must build differs by kind; the protocols
are in :mod:`neuroenc.interfaces` and are summarised in each hook below.
"""

from __future__ import annotations

import pluggy

from neuroenc.records import Component

PROJECT_NAME = "neuroenc"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def neuroenc_datasets() -> list[Component]:
    """Return dataset readers.

    Called when a registry's ``dataset.kind`` is resolved. The factory builds a
    :class:`neuroenc.interfaces.DatasetReader`: ``subjects()`` lists the subject ids
    it can serve and ``load(subject)`` returns a
    :class:`neuroenc.data.subject.SubjectData` (stimuli and responses per split, unit
    coordinates on a surface or in a volume, ROI labels, noise ceiling, metadata). An
    optional ``resolve_subject(value)`` maps what users write in ``dataset.subjects``
    to an id. The params model receives the keys of the registry's ``dataset:`` block
    other than ``kind`` and ``subjects``. Built-in: ``algonauts2023``, ``demo``,
    ``folder`` (docs/datasets.md).
    """


@hookspec
def neuroenc_captioners() -> list[Component]:
    """Return captioners: components that write a text description for each image.

    The factory builds a :class:`neuroenc.interfaces.Captioner` whose
    ``caption(images)`` takes a list of image paths and returns one string per image,
    and whose ``identity()`` returns everything that changes its output (model,
    revision, prompt, generation settings) for the caption cache key.
    LLM-VEM's ``minigpt4`` is one.
    """


@hookspec
def neuroenc_text_encoders() -> list[Component]:
    """Return text encoders: components that embed captions as vectors.

    The factory builds a :class:`neuroenc.interfaces.TextEncoder` whose
    ``encode(texts)`` returns a float array of shape (n_texts, dim) and whose
    ``identity()`` keys the embedding cache. LLM-VEM's ``clip`` is one.
    """


@hookspec
def neuroenc_image_backbones() -> list[Component]:
    """Return image backbones: networks that turn images into features.

    The factory builds a :class:`neuroenc.interfaces.ImageBackbone`: a ``module``
    (``torch.nn.Module``), a ``preprocess`` callable (PIL image -> tensor of shape
    (3, H, W)), ``forward_features(batch)`` returning a dict ``{layer: tensor of shape
    (batch, dim)}`` for every requested layer in one forward pass, and ``identity()``
    covering model, weights, preprocessing, image size, layers and pooling (the feature
    cache key). Built-in: ``timm`` (any timm model); LLM-VEM adds ``eva02``.
    """


@hookspec
def neuroenc_voxel_mappers() -> list[Component]:
    """Return voxel mappers: maps from image features to every vertex's response.

    The factory builds a :class:`neuroenc.interfaces.VoxelMapper` with ``fit(features,
    responses)`` (arrays of shape (n_images, n_features) and (n_images, n_vertices))
    and ``predict(features)`` -> (n_images, n_vertices). Built-in: ``ridge``, a
    per-vertex cross-validated ridge; LLM-VEM adds ``pca-head``.
    """


@hookspec
def neuroenc_alignment_losses() -> list[Component]:
    """Return alignment losses between image embeddings and text embeddings.

    The factory builds a :class:`neuroenc.interfaces.AlignmentLoss`: a callable
    ``loss(image_embeddings, text_embeddings)`` on tensors of shape (batch, dim) that
    returns a scalar tensor, and a ``weight`` (lambda) by which the trainer multiplies
    it before adding it to the regression loss. LLM-VEM's ``contrastive`` is one.
    """


@hookspec
def neuroenc_metrics() -> list[Component]:
    """Return per-vertex metrics.

    The factory builds a :class:`neuroenc.interfaces.Metric`: a callable
    ``metric(measured, predicted, noise_ceiling)`` on arrays of shape (n_images,
    n_vertices) (noise ceiling (n_vertices,) or None) that returns one value per vertex,
    or None when it cannot be computed (e.g. no noise ceiling). Built-in: ``pearson``,
    ``r2``, ``noise_normalized`` (the Algonauts 2023 score).
    """


@hookspec
def neuroenc_recipes() -> list[Component]:
    """Return model recipes: how components compose into a trained encoding model.

    A registry's ``models.<name>`` block names a recipe and gives its params; fields of
    the params model annotated with :class:`neuroenc.records.Slot` reference other
    components by name and are validated against their kind. The factory builds a
    :class:`neuroenc.interfaces.EncodingModel` with ``fit(subject_data, train_index)``
    and ``predict(subject_data, split, index)`` (an array, or a
    :class:`neuroenc.interfaces.Prediction` with named parts), and optionally
    ``vertex_maps()`` (per-vertex values learnt in ``fit``) and ``derived_scores(scores)``.
    Built-in: ``frozen-features`` (backbone features -> voxel mapper); LLM-VEM adds its
    two-stage trainer.
    """
