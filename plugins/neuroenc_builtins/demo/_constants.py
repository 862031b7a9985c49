"""Constants of the demo generator: version, sizes, NSD-like facts."""

from __future__ import annotations

import sys
import time

from neuroenc_builtins.algonauts import ROI_NAMES

#: Version of the generator's output; part of the cache key. Bump it whenever a change
#: alters any written byte for some parameter set.
DEMO_GENERATOR_VERSION = "1.0.1"  # 1.0.1: generator module renamed in demo_info.json

HEMISPHERES = ("lh", "rh")
_NILEARN_HEMI = {"lh": "left", "rh": "right"}
N_FSAVERAGE5_VERTICES = 10242

#: ROI classes and names in label order (label k = position k, 0 = 'Unknown'), as in the
#: Algonauts 2023 ``mapping_<class>.npy`` files.
ROI_CLASSES: dict[str, tuple[str, ...]] = ROI_NAMES

#: Semantic categories the scenes are composed of; the category ROIs prefer the first four.
CATEGORIES = ("face", "body", "place", "word", "vehicle", "food", "animal")

# NSD images subtend 8.4 deg of visual angle (Allen et al. 2022, Nat. Neurosci.).
_VISUAL_FIELD_DEG = 8.4
# NSD repeats each image 3 times; a session had 750 trials. Shorter sessions here so that
# a small demo still has several sessions to z-score within.
_TRIALS_PER_SESSION = 300
_N_REPEATS = 3
# Fraction of each subject's training images that all subjects share (NSD's shared images
# are partly in every subject's training split).
_SHARED_TRAIN_FRACTION = 0.1
_N_NSD_IMAGES = 73000
# Fixed response-model grid: contrast is pooled on this many cells per image side,
# whatever the image size, so the ground truth is defined in degrees, not pixels.
_GRID = 32

_TERMS = ("contrast", "luminance", "colour", "semantic", "global", "idiosyncratic")


def _log(progress: bool, t0: float, message: str) -> None:
    if progress:
        print(f"[neuroenc demo {time.perf_counter() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)
