"""Writers for the legacy file formats: numpy-1.x-loadable pickles and zarr v2 directory stores.

The names of both, in one place: the pickle writer lives in ``moetape.replay.legacy_pickle``
(``write_pickle``, ``dump``, ``dumps``, ``RowList``), the zarr v2 store writer in
``moetape.replay.legacy_zarr`` (``ZarrV2Writer``, the legacy chunking, ``tree_sha256``).
"""

from __future__ import annotations

from moetape.replay.legacy_pickle import RowList as RowList
from moetape.replay.legacy_pickle import dump as dump
from moetape.replay.legacy_pickle import dumps as dumps
from moetape.replay.legacy_pickle import write_pickle as write_pickle
from moetape.replay.legacy_zarr import BLOSC_CONFIG as BLOSC_CONFIG
from moetape.replay.legacy_zarr import ZarrV2Writer as ZarrV2Writer
from moetape.replay.legacy_zarr import legacy_chunks as legacy_chunks
from moetape.replay.legacy_zarr import legacy_default_chunks as legacy_default_chunks
from moetape.replay.legacy_zarr import tree_sha256 as tree_sha256
