"""Datasets: readers that turn files on disk into checked, typed records.

- :mod:`neuroenc.data.algonauts`: the Natural Scenes Dataset as packaged by the
  Algonauts 2023 challenge (:func:`~neuroenc.data.algonauts.read_subject`).
"""
