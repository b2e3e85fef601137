"""The streaming data path: shards -> samples -> episode pools -> decoded episode batches.

`shard_io` reads tars from a folder or a URL, `sampler` draws training episodes from per-class pools,
`manifest_stream` reads a fixed training-episode manifest, `index` reads fold lists and index.tsv,
`draw` draws episodes (pure), `manifests` builds and reads episode manifests, `by_key` reads samples
by key and builds evaluation episodes, `normalize` moves batches onto the device, `transforms`
decodes and resizes image/label pairs, and `episodes` is the DVC stage that writes test manifests.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params


def shards_location(p: Params, shards: str | Path) -> str:
    """Where shards are read from: `sampler.shards_url` when set (http(s)://, s3://, ...), else `shards`."""
    return p.sampler.shards_url or str(shards)
