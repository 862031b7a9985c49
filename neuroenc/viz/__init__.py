"""Figures and reports: surface maps on fsaverage and volume maps (nilearn), ROI
comparisons, sweeps, and the self-contained HTML report of a run."""
