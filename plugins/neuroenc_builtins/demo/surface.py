"""Surface: the fsaverage5 meshes (nilearn, offline) and graph utilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ._constants import _NILEARN_HEMI, N_FSAVERAGE5_VERTICES

# ---------------------------------------------------------------------------------------
# Surface: fsaverage5 meshes and graph utilities
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mesh:
    """One fsaverage5 hemisphere; all arrays have 10,242 rows."""

    pial: np.ndarray  # (n, 3) mm, fsaverage (MNI305-like) space: landmarks are looked up here
    sphere: np.ndarray  # (n, 3) registration sphere scaled to radius 100: smooth distances
    sulc: np.ndarray  # (n,) sulcal depth, positive in sulci
    graph_sphere: Any  # scipy csr (n, n) edge lengths on the sphere
    graph_fundus: Any  # scipy csr (n, n) midthickness edge lengths, costly on gyral crowns
    smoother: Any  # scipy csr (n, n) row-normalised (adjacency + identity)


@lru_cache(maxsize=2)
def _load_mesh(hemi: str) -> _Mesh:
    from nilearn import datasets  # imported here: nilearn takes seconds to import
    from scipy import sparse

    side = _NILEARN_HEMI[hemi]
    fsavg = datasets.load_fsaverage("fsaverage5")
    pial = np.asarray(fsavg["pial"].parts[side].coordinates, dtype=np.float64)
    white = np.asarray(fsavg["white_matter"].parts[side].coordinates, dtype=np.float64)
    sphere = np.asarray(fsavg["sphere"].parts[side].coordinates, dtype=np.float64)
    sphere = 100.0 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    faces = np.asarray(fsavg["pial"].parts[side].faces, dtype=np.int64)
    sulc_img = datasets.load_fsaverage_data(mesh="fsaverage5", data_type="sulcal")
    sulc = np.asarray(sulc_img.data.parts[side], dtype=np.float64).ravel()
    if pial.shape[0] != N_FSAVERAGE5_VERTICES:
        raise RuntimeError(
            f"nilearn's fsaverage5 {side} hemisphere has {pial.shape[0]} vertices; "
            f"expected {N_FSAVERAGE5_VERTICES}"
        )
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    n = pial.shape[0]

    def weighted(coords: np.ndarray, cost: np.ndarray | None = None) -> sparse.csr_matrix:
        length = np.linalg.norm(coords[edges[:, 0]] - coords[edges[:, 1]], axis=1)
        if cost is not None:
            length = length * 0.5 * (cost[edges[:, 0]] + cost[edges[:, 1]])
        m = sparse.coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n))
        return (m + m.T).tocsr()

    # Tracing the calcarine fundus: walking on gyral crowns (low sulc) costs up to 5x more.
    fundus_cost = 1.0 + 4.0 * np.clip(1.2 - sulc, 0.0, None)
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adjacency = (adjacency + adjacency.T + sparse.identity(n)).tocsr()
    smoother = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    for arr in (pial, sphere, sulc):
        arr.setflags(write=False)
    return _Mesh(
        pial=pial,
        sphere=sphere,
        sulc=sulc,
        graph_sphere=weighted(sphere),
        graph_fundus=weighted((pial + white) / 2.0, fundus_cost),
        smoother=smoother.tocsr(),
    )


def _nearest_vertex(coords: np.ndarray, xyz: Sequence[float]) -> int:
    return int(np.argmin(np.linalg.norm(coords - np.asarray(xyz, dtype=np.float64), axis=1)))


def _smooth_field(mesh: _Mesh, values: np.ndarray, n_iter: int) -> np.ndarray:
    """Return ``values`` (n_vertices, ...) averaged over mesh neighbours ``n_iter`` times."""
    for _ in range(n_iter):
        values = mesh.smoother @ values
    return values


def _random_field(mesh: _Mesh, rng: np.random.Generator, n_iter: int = 6, size: int | None = None) -> np.ndarray:
    """Return a spatially smooth Gaussian field with unit variance over vertices."""
    shape = (N_FSAVERAGE5_VERTICES,) if size is None else (N_FSAVERAGE5_VERTICES, size)
    f = _smooth_field(mesh, rng.standard_normal(shape), n_iter)
    return (f - f.mean(axis=0)) / f.std(axis=0)
