"""The dataset-neutral record every dataset reader produces.

- :mod:`neuroenc.data.subject`: :class:`~neuroenc.data.subject.SubjectData` (stimuli,
  responses per split, unit coordinates, ROIs, noise ceiling, metadata) and
  :class:`~neuroenc.data.subject.DatasetError`. The readers themselves are plugins
  (``neuroenc_builtins``: ``algonauts2023``, ``demo``, ``folder``; docs/datasets.md).
"""
