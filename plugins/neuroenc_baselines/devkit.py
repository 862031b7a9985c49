"""The Algonauts 2023 devkit baseline: AlexNet -> StandardScaler -> PCA(100) -> LinearRegression.

What the devkit does (gifale95/algonauts_2023, ``code/02_baseline_encoding_model``):

* ``01_extract_image_features.py``: torchvision AlexNet with ImageNet weights
  (``models.alexnet(pretrained=True)``); images ``Resize((224, 224))``, ``ToTensor``,
  ``Normalize`` with the ImageNet mean and std; the feature maps of
  ``maxpool1, maxpool2, ReLU3, ReLU4, maxpool5, ReLU6, ReLU7, fc8`` flattened and
  concatenated (205,672 values per image at 224 px); a ``StandardScaler`` and then
  ``PCA(n_components=100, random_state=20200220)`` fitted on the *training* images'
  features and applied to the test images' features.
* ``02_train_encoding.py``: one ``LinearRegression`` per vertex on the 100 components
  (ordinary least squares; one multi-output fit here, which is the same per column).

The challenge's Colab tutorial differs: one layer chosen from a list (default
``features.2``, i.e. ``maxpool1``), no scaler, and an ``IncrementalPCA(100)`` fitted by
``partial_fit`` on batches of training images. Both are one configuration away::

    devkit:                       # the scripts (the reference score 40.48 on the test set)
      recipe: devkit
    devkit-tutorial:              # the Colab tutorial
      recipe: devkit
      backbone: {name: torchvision-alexnet, layers: [features.2]}
      mapper: {name: devkit-pca-linear, standardize: false, pca: incremental, batch_size: 300}

Memory: at 224 px the concatenated features take 0.8 MB per image (8 GB for a subject's
9,841 NSD training images, as in the devkit); the features are cached on disk (memory
mapped) and streamed through the scaler in row chunks, but a full PCA holds the scaled
training matrix in memory (as the devkit does). ``pca: incremental`` never does.

Choices of ours: the features go through neuroenc's feature cache (keyed on the weights,
layers and preprocessing); without internet, ``pretrained: false`` builds AlexNet with
random weights (seeded by the run), and ``checkpoint_path`` loads a local copy of
torchvision's ``alexnet-owt-7be5be79.pth``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuroenc import Component
from neuroenc.core.config import BackboneRef, ComponentRef, MapperRef
from neuroenc.stimuli.features import extract_features

if TYPE_CHECKING:
    import torch

__all__ = ["DEVKIT_LAYERS", "AlexNetParams", "AlexNetBackbone", "DevkitMapperParams",
           "DevkitMapper", "DevkitModel", "layer_features"]

# torchvision AlexNet: module index -> the devkit's layer name
_FEATURE_NAMES = ["conv1", "ReLU1", "maxpool1", "conv2", "ReLU2", "maxpool2", "conv3", "ReLU3",
                  "conv4", "ReLU4", "conv5", "ReLU5", "maxpool5"]
_CLASSIFIER_NAMES = ["Dropout6", "fc6", "ReLU6", "Dropout7", "fc7", "ReLU7", "fc8"]
#: The layers of the devkit's ``01_extract_image_features.py``.
DEVKIT_LAYERS = ("maxpool1", "maxpool2", "ReLU3", "ReLU4", "maxpool5", "ReLU6", "ReLU7", "fc8")
#: The devkit's seed (torch and PCA random_state).
DEVKIT_SEED = 20200220
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_table() -> dict[str, tuple[str, int]]:
    """Return ``{name: (part, index)}`` for devkit names and torchvision node names."""
    table = {}
    for i, name in enumerate(_FEATURE_NAMES):
        table[name] = table[f"features.{i}"] = ("features", i)
    for i, name in enumerate(_CLASSIFIER_NAMES):
        table[name] = table[f"classifier.{i}"] = ("classifier", i)
    return table


_LAYERS = _layer_table()


class AlexNetParams(BaseModel):
    """Parameters of ``torchvision-alexnet``."""

    model_config = ConfigDict(extra="forbid")
    layers: list[str] = Field(default_factory=lambda: list(DEVKIT_LAYERS),
                              description="devkit names (maxpool1 ... fc8) or torchvision node "
                              "names (features.2, classifier.5); default: the devkit's 8 layers")
    pretrained: bool = Field(True, description="torchvision's ImageNet weights (IMAGENET1K_V1; "
                             "downloaded on first use into the torch hub cache); false: random "
                             "weights seeded by the run")
    checkpoint_path: str | None = Field(None, description="a local alexnet-owt-7be5be79.pth "
                                        "(or any AlexNet state dict) instead of the download")
    image_size: int = Field(224, ge=64, description="images are resized to image_size x "
                            "image_size (the devkit: 224; AlexNet needs at least 64)")

    @field_validator("layers")
    @classmethod
    def _known(cls, layers: list[str]) -> list[str]:
        from neuroenc.core.plugins import suggest

        for layer in layers:
            if layer not in _LAYERS:
                names = list(_FEATURE_NAMES) + list(_CLASSIFIER_NAMES)
                raise ValueError(f"unknown AlexNet layer {layer!r}; known: {', '.join(names)} "
                                 f"(or features.0-12, classifier.0-6){suggest(layer, names)}")
        if not layers:
            raise ValueError("layers: give at least one layer")
        return layers


class AlexNetBackbone:
    """torchvision AlexNet returning the flattened maps of the chosen layers (devkit style)."""

    def __init__(self, params: AlexNetParams):
        import torch
        import torchvision
        from torchvision import transforms

        self.params = params
        if params.checkpoint_path is not None:
            self.module = torchvision.models.alexnet(weights=None)
            self.checkpoint = _resolve_checkpoint(params.checkpoint_path)
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            self.module.load_state_dict(state.get("state_dict", state))
            self.weights = f"checkpoint {self.checkpoint.name}"
        elif params.pretrained:
            self.checkpoint = None
            try:
                self.module = torchvision.models.alexnet(weights="IMAGENET1K_V1")
            except Exception as exc:  # offline: URLError, ConnectionError, a partial file ...
                hub = Path(torch.hub.get_dir()) / "checkpoints"
                raise RuntimeError(
                    f"torchvision-alexnet: could not load the ImageNet weights "
                    f"({type(exc).__name__}: {exc}). Without internet, copy "
                    f"alexnet-owt-7be5be79.pth into {hub}, give it as checkpoint_path, or set "
                    "pretrained: false (random weights)") from exc
            self.weights = "IMAGENET1K_V1"
        else:
            self.checkpoint = None
            self.module = torchvision.models.alexnet(weights=None)  # torch RNG, seeded by the run
            self.weights = "random"
        self.module.eval()
        self._digest = _state_digest(self.module) if self.weights == "random" else None
        size = params.image_size
        self.preprocess = transforms.Compose([
            transforms.Resize((size, size)), transforms.ToTensor(),
            transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)])
        self.layers = list(params.layers)
        self._wanted = {_LAYERS[name]: name for name in self.layers}

    def forward_features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{layer: (batch, C*H*W)}``: each requested layer's map, flattened.

        The same walk through ``features``, ``avgpool`` and ``classifier`` as the devkit's
        ``AlexNet.forward``; outputs are cloned because torchvision's ReLUs work in place.
        """
        import torch

        found: dict[tuple[str, int], torch.Tensor] = {}
        x = batch
        # stop after the deepest requested layer (features come before the classifier)
        last = max(self._wanted, key=lambda key: (key[0] == "classifier", key[1]))
        for i, layer in enumerate(self.module.features):
            x = layer(x)
            if ("features", i) in self._wanted:
                found["features", i] = x.flatten(1).clone()
        if last[0] == "classifier":
            x = torch.flatten(self.module.avgpool(x), 1)
            for i, layer in enumerate(self.module.classifier):
                x = layer(x)
                if ("classifier", i) in self._wanted:
                    found["classifier", i] = x.flatten(1).clone()
                if ("classifier", i) == last:
                    break
        return {name: found[key] for key, name in self._wanted.items()}

    def identity(self) -> dict:
        import torchvision

        ckpt = None
        if self.checkpoint is not None:
            stat = self.checkpoint.stat()
            ckpt = {"path": str(self.checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return {"component": "torchvision-alexnet", "weights": self.weights, "checkpoint": ckpt,
                "random_weights_sha256": self._digest, "torchvision_version": torchvision.__version__,
                "layers": self.layers, "image_size": self.params.image_size,
                "preprocess": "Resize((s, s)), ToTensor, Normalize(ImageNet)", "pooling": "flatten"}


def _state_digest(module) -> str:
    # Random weights depend on the run's seed and torch's initialisers: key the cache on
    # the weights themselves, not on a description of them.
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _resolve_checkpoint(path: str) -> Path:
    """Return the file ``path`` names: a path (``~`` and ``$VARS`` expanded) or ``pkg://module/file``."""
    import importlib.util
    import os

    if path.startswith("pkg://"):
        module, _, rel = path[len("pkg://"):].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"checkpoint_path {path!r}: Python package {module!r} is not "
                                    "installed")
        resolved = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        resolved = Path(os.path.expandvars(path)).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"checkpoint_path {path!r}: no such file ({resolved})")
    return resolved


def _alexnet(params: AlexNetParams, context) -> AlexNetBackbone:
    return AlexNetBackbone(params)


# --------------------------------------------------------------------------- mapper


class DevkitMapperParams(BaseModel):
    """Parameters of ``devkit-pca-linear``."""

    model_config = ConfigDict(extra="forbid")
    standardize: bool = Field(True, description="StandardScaler fitted on the training features "
                              "(the devkit scripts: yes; the Colab tutorial: no)")
    n_components: int = Field(100, ge=1, description="PCA components (the devkit: 100)")
    pca: Literal["full", "incremental"] = Field(
        "full", description="'full': sklearn PCA (the scripts); 'incremental': IncrementalPCA "
        "fitted batch by batch (the tutorial; bounded memory)")
    batch_size: int = Field(300, ge=1, description="incremental PCA: training images per "
                            "partial_fit (a last batch smaller than n_components joins the one "
                            "before, as IncrementalPCA.fit does)")
    random_state: int | None = Field(DEVKIT_SEED, description="PCA random_state (the devkit's "
                                     "seed 20200220)")
    chunk_size: int = Field(1024, ge=1, description="rows scaled / projected at a time (memory "
                            "only; results do not depend on it)")


class DevkitMapper:
    """StandardScaler -> PCA -> LinearRegression, fitted on training features only.

    ``fit`` and ``predict`` take features of shape (n_images, n_features) — a NumPy
    array, a memory map, or anything with ``shape`` and row slicing — and responses of
    shape (n_images, n_vertices). Features are streamed in ``chunk_size`` rows.

    Attributes
    ----------
    scaler_ : sklearn.preprocessing.StandardScaler or None
    pca_ : sklearn.decomposition.PCA or IncrementalPCA
    regression_ : sklearn.linear_model.LinearRegression
        ``coef_`` of shape (n_vertices, n_components): one ordinary least-squares fit per
        vertex, as the devkit's loop over vertices.
    """

    def __init__(self, params: DevkitMapperParams | None = None):
        self.params = params or DevkitMapperParams()

    def _chunks(self, n: int):
        step = self.params.chunk_size
        for start in range(0, n, step):
            yield slice(start, min(start + step, n))

    def _scaled(self, features, rows: slice) -> np.ndarray:
        block = np.asarray(features[rows], dtype=np.float32)
        return self.scaler_.transform(block) if self.scaler_ is not None else block

    def fit(self, features, responses: np.ndarray) -> DevkitMapper:
        """Fit on features (n_images, n_features) and responses (n_images, n_vertices)."""
        from sklearn.decomposition import PCA, IncrementalPCA
        from sklearn.linear_model import LinearRegression
        from sklearn.preprocessing import StandardScaler
        from sklearn.utils import gen_batches

        p = self.params
        n, d = features.shape
        responses = np.asarray(responses)
        if responses.shape[0] != n:
            raise ValueError(f"devkit-pca-linear: {n} feature rows but {responses.shape[0]} "
                             "response rows")
        if p.n_components > min(n, d):
            raise ValueError(f"devkit-pca-linear: n_components={p.n_components} needs at least "
                             f"as many training images and features; found {n} images, {d} "
                             "features")
        self.scaler_ = None
        if p.standardize:
            self.scaler_ = StandardScaler()
            for rows in self._chunks(n):
                self.scaler_.partial_fit(np.asarray(features[rows], dtype=np.float32))
        if p.pca == "full":
            scaled = np.empty((n, d), dtype=np.float32)
            for rows in self._chunks(n):
                scaled[rows] = self._scaled(features, rows)
            self.pca_ = PCA(n_components=p.n_components, random_state=p.random_state).fit(scaled)
            components = self.pca_.transform(scaled)
            del scaled
        else:
            if p.batch_size < p.n_components:
                raise ValueError(f"devkit-pca-linear: batch_size={p.batch_size} must be at "
                                 f"least n_components={p.n_components} for IncrementalPCA")
            self.pca_ = IncrementalPCA(n_components=p.n_components, batch_size=p.batch_size)
            for rows in gen_batches(n, p.batch_size, min_batch_size=p.n_components):
                self.pca_.partial_fit(self._scaled(features, rows))
            components = self._components(features)
        self.regression_ = LinearRegression().fit(components, responses)
        self.n_features_in_ = d
        return self

    def _components(self, features) -> np.ndarray:
        n = features.shape[0]
        out = np.empty((n, self.params.n_components), dtype=np.float64)
        for rows in self._chunks(n):
            out[rows] = self.pca_.transform(self._scaled(features, rows))
        return out

    def predict(self, features) -> np.ndarray:
        """Return predicted responses of shape (n_images, n_vertices), float32."""
        if features.shape[1] != self.n_features_in_:
            raise ValueError(f"devkit-pca-linear: features have {features.shape[1]} columns, "
                             f"fitted on {self.n_features_in_}")
        return np.asarray(self.regression_.predict(self._components(features)), dtype=np.float32)


# --------------------------------------------------------------------------- recipe


class _RowConcat:
    """Rows of several layers' feature matrices, concatenated on access (no full copy).

    ``index`` selects rows (e.g. the training images of a holdout split).
    """

    def __init__(self, layers: Sequence[np.ndarray], index: np.ndarray | None = None):
        self.layers = list(layers)
        self.index = index
        n = len(self.layers[0]) if index is None else len(index)
        self.shape = (n, sum(int(a.shape[1]) for a in self.layers))

    def __getitem__(self, rows: slice) -> np.ndarray:
        sel = rows if self.index is None else self.index[rows]
        return np.concatenate([np.asarray(a[sel], dtype=np.float32) for a in self.layers], axis=1)


def layer_features(backbone, data, split: str, context, index: np.ndarray | None = None) -> _RowConcat:
    """Return the cached layer features of a split as a row-sliceable (n_images, n_features)."""
    images = data.train_images if split == "train" else data.test_images
    layers = extract_features(backbone, images, context,
                              description=f"{data.subject} {split} features")
    return _RowConcat(list(layers.values()), index)


class DevkitParams(BaseModel):
    """Parameters of the ``devkit`` recipe (defaults: the devkit scripts)."""

    model_config = ConfigDict(extra="forbid")
    backbone: BackboneRef = Field(default_factory=lambda: ComponentRef(name="torchvision-alexnet"),
                                  description="image backbone (default: AlexNet, the devkit's layers)")
    mapper: MapperRef = Field(default_factory=lambda: ComponentRef(name="devkit-pca-linear"),
                              description="voxel mapper (default: StandardScaler -> PCA(100) -> "
                              "LinearRegression)")


class DevkitModel:
    """Frozen backbone features (streamed from the cache) -> the devkit's mapper.

    Unlike ``frozen-features``, the layers are never concatenated into one in-memory
    matrix here: the mapper reads row chunks, so memory stays at what PCA needs.
    """

    #: Shown in the run's encoders.json (neuroenc.core.encoders): nothing is saved for it.
    not_saved_reason = ("not saved yet: the devkit's scikit-learn pipeline (StandardScaler -> PCA "
                        "-> LinearRegression) has no state(); frozen-features and llm-vem are saved")

    def __init__(self, params: DevkitParams, context):
        self.context = context
        self.backbone = context.build("image_backbone", params.backbone)
        self.mapper = context.build("voxel_mapper", params.mapper)

    def fit(self, data, train_index: np.ndarray) -> None:
        n_train = len(data.train_images)
        index = None if np.array_equal(train_index, np.arange(n_train)) else np.asarray(train_index)
        features = layer_features(self.backbone, data, "train", self.context, index)
        responses = data.responses("train")[train_index]
        if isinstance(self.mapper, DevkitMapper):
            self.mapper.fit(features, responses)
        else:  # any other mapper gets a plain array
            self.mapper.fit(features[:], responses)

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        features = layer_features(self.backbone, data, split, self.context,
                                  None if index is None else np.asarray(index))
        if not isinstance(self.mapper, DevkitMapper):
            features = features[:]
        return np.asarray(self.mapper.predict(features), dtype=np.float32)


BACKBONES = [
    Component("torchvision-alexnet", _alexnet, AlexNetParams,
              "torchvision AlexNet, flattened maps of the Algonauts devkit's layers, 224 px"),
]
MAPPERS = [
    Component("devkit-pca-linear", lambda params, context: DevkitMapper(params), DevkitMapperParams,
              "StandardScaler -> PCA(100) -> per-vertex LinearRegression (Algonauts devkit)"),
]
RECIPES = [
    Component("devkit", DevkitModel, DevkitParams,
              "the Algonauts 2023 devkit baseline: AlexNet -> StandardScaler -> PCA(100) -> "
              "LinearRegression"),
]
