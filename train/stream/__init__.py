"""The streaming data path: shards -> samples -> episode pools -> decoded episode batches.

`shard_io` reads tars from a folder or a URL, `sampler` draws training episodes from per-class pools,
`manifest_stream` reads a fixed training-episode manifest, `index` reads fold lists and index.tsv,
`draw` draws episodes (pure), `manifests` builds and reads episode manifests, `by_key` reads samples
by key and builds evaluation episodes, `normalize` moves batches onto the device, `transforms`
decodes and resizes image/label pairs, and `episodes` is the DVC stage that writes test manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Params

if TYPE_CHECKING:
    from train.stream.shard_io import RemoteReads


def shards_location(p: Params, shards: str | Path) -> str:
    """Where shards are read from: `sampler.shards_url` when set (http(s)://, s3://, ...), else `shards`."""
    return p.sampler.shards_url or str(shards)


def remote_reads(p: Params) -> RemoteReads:
    """How shards are read over the network: params `sampler.min_bytes_per_s`, ..., the shard cache
    (`cache_dir`, `cache_bytes`) and whether reads by key keep whole remote shards in it (`cache_remote`)."""
    from pipeline.netread import NetLimits
    from train.stream.shard_cache import ShardCache, default_cache_dir
    from train.stream.shard_io import RemoteReads

    s = p.sampler
    limits = NetLimits(s.min_bytes_per_s, s.rate_window_s, s.deadline_s)
    cache = ShardCache(s.cache_dir or str(default_cache_dir()), s.cache_bytes)
    return RemoteReads(limits, cache, s.cache_remote)
