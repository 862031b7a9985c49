"""A synthetic, Algonauts-2023-shaped stand-in for the Natural Scenes Dataset.

:func:`generate_demo_dataset` writes, deterministically from a seed, a small dataset in the
exact layout of the Algonauts 2023 challenge release (``shared/REFERENCE.md`` section 2)
so that the real reader, the models, the metrics and the plots all run end to end without
the 40 GB download. :func:`ensure_demo_dataset` caches one dataset per parameter set.

What is simulated
-----------------
*Space.* The fsaverage5 surface bundled with nilearn (10,242 vertices per hemisphere;
works offline). Each subject's *challenge space* is a subset of a few thousand vertices
per hemisphere covering posterior visual cortex; its boundary differs a little between
subjects, so vertex counts differ as in the real data.

*ROIs.* Early visual areas (V1v/d, V2v/d, V3v/d, hV4) are laid out along the calcarine
sulcus: the sulcal fundus is traced on the surface from the occipital pole to the
parieto-occipital junction, V1 is a band around it (ventral bank = upper visual field),
V2 and V3 are successive bands around V1 and hV4 lies beyond ventral V3. Eccentricity
increases anteriorly with a log cortical-magnification law; pRFs are larger in higher
areas and at larger eccentricity; each hemisphere sees the contralateral hemifield.
Category-selective ROIs (faces, bodies, places, words) are geodesic disks around
literature coordinates (ventral occipitotemporal, lateral occipitotemporal, medial), and
the seven NSD streams tile the challenge space. Labels of different classes may overlap;
within a class each vertex carries one label.

*Images.* Procedurally drawn RGB scenes: faces, people, houses and buildings, written
words, vehicles, food and animals at random positions, sizes and colours on varied
backgrounds (landscapes, rooms, gratings, checkerboards, gradients, noise), plus texture
patches, so that low-level properties vary over the visual field. Every image has a
caption generated from what was actually drawn.

*Responses.* See :func:`generate_demo_dataset` for the ground-truth model: pRF-weighted,
compressive local contrast for early visual vertices; graded, position-tolerant category
preferences for category-selective vertices; a spatially smooth random mix elsewhere; plus
trial noise, per-session drifts, per-session z-scoring and averaging of repeats as in
NSD. The noise ceiling is computed from the simulated repeats with NSD's ``ncsnr``.

Nothing here is real brain data; the ROI placements are plausible approximations for a
demo, not an atlas.

The generator is split by concern: ``surface.py`` (meshes), ``anatomy.py`` (retinotopy,
ROIs, challenge space), ``scenes.py`` (drawn images and their captions),
``image_features.py`` and ``responses.py`` (the ground-truth model and NSD-like trials),
``writer.py`` (parameters, cache key, files); ``_constants.py`` holds what they share.
"""

from ._constants import CATEGORIES, DEMO_GENERATOR_VERSION, ROI_CLASSES
from .writer import ensure_demo_dataset, generate_demo_dataset

__all__ = [
    "DEMO_GENERATOR_VERSION",
    "generate_demo_dataset",
    "ensure_demo_dataset",
    "ROI_CLASSES",
    "CATEGORIES",
]
