"""Scores and results: per-vertex metrics (the Algonauts 2023 score), xarray results by
vertex and ROI, and the analysis API (many runs side by side, ROI tables, CIs)."""
