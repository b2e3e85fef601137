"""Streaming N-way K-shot training episodes from WebDataset shards through bounded per-class pools.

`EpisodeStream.pipeline` is a webdataset `DataPipeline`; what flows at each stage:
  shard urls      manifest.json's list, shuffled per epoch (SimpleShardList) from (seed, epoch), split by
                  rank, then by DataLoader worker (split_by_node + split_by_worker in one slice), so every
                  worker of every rank reads its own shards, reshuffled per pass; or, with `resampled`,
                  drawn with replacement per reader (ResampledShards, the maintainers' DDP advice)
  raw samples     opened by webdataset's gopen (train.stream.shard_io's handlers), tar members checked and
                  grouped by key (group_by_keys); JPEG/PNG stay encoded
  episodes        `EpisodeDraw`: a sample enters the `ClassPools` buffer (`pool_size` keys, reservoir
                  replacement) of every base class it holds under the fold's train.txt (presence rule
                  applied once, by the folds stage); memory <= classes x pool_size. Classes are
                  drawn uniformly over the ready base classes (HSNet-like balance), query and supports
                  from the pools
  decoded         `EpisodeDecoder`: decoded, resized and flipped only now
  batches         `batch_size` episodes stacked into the design.md dict (uint8 images)

2-way rule: the query comes from the pool of the episode's first class, so it always contains
that class; the other ways may or may not appear in it (their masks are then all background), as
in PANet/DENet N-way training. Supports of a class never include the query image; the same image
may support two different ways when it holds both classes.

Truncated or unsafe shards (sparse or oversized members) are skipped with a logged warning, counted in
`stats["skipped_shards"]` (the pipeline's webdataset error handler, `SkipLog.shard`); samples completed
before the damage are kept; a sample lacking its `.jpg` or `.label.png`, or whose image or label is
unreadable or larger than MAX_IMAGE_PIXELS, is skipped with a warning naming shard and key, counted in
`stats["skipped_samples"]`. A reader that meets more than `useless_limit` samples in a row without a
base class of the fold's train list stops with a ShardError (lists and shards do not belong together;
reading on would never draw an episode). `stats` lives in a DataLoader worker, so every batch also
carries its reader's counts so far in this pass, as `data_skips` = (reader id, shards, samples); the
trainer sums them per reader and logs the totals (dvclive). Test-time reading never skips (see
train.stream.by_key).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.utils import make_seed

from pipeline.folds import binary_label, training_label
from pipeline.shard_format import member_limit, sample_image_problem
from train.stream.shard_io import DEFAULT_REMOTE, RemoteReads, Sample, ShardError, split_shards, tar_samples
from train.stream.transforms import TrainTransform, binary_mask, episode_label

log = logging.getLogger(__name__)
# the cause named when the fold's training keys are in no shard (stream and manifest training alike)
FOLD_LISTS_ELSEWHERE = "the fold lists do not belong to these shards (rebuild the folds from them)"

JPG, LABEL = "jpg", "label.png"
# A reader gives up after this many samples in a row without a base class of the fold's train list,
# or after a full pass over the split if that is longer: honest data holds training images in every
# few samples, so such a run means the fold lists and the shards come from different builds.
USELESS_SAMPLES = 1000
_VALUES = np.arange(256, dtype=np.uint8)  # every label value: the rules below become lookup tables
VOID_PX = 255  # a void pixel's value in a dataset label
# `train.void`: what a void pixel of a training image is, (in the support masks, in the query labels).
# background: the DENet release (and its CANet, PGNet, AMP); ignore: the standard protocol; query_ignore:
# PANet's release (void counts as background in a support's background mask, its query loss ignores it,
# `dataloaders/customized.py:28-65`, `train.py:78,101`); foreground: SG-One's release (every mask pixel > 0
# is foreground, void included, `utils/mydataset.py:48-56`; 1-way only).
VOID_RULES: dict[str, tuple[str, str]] = {
    "background": ("background", "background"),
    "ignore": ("ignore", "ignore"),
    "query_ignore": ("background", "ignore"),
    "foreground": ("foreground", "foreground"),
}


@dataclass
class Episode:
    """One drawn episode: ids only; decoding happens in `EpisodeStream._decode`."""

    class_ids: list[int]
    query: str
    supports: list[list[str]]


class ClassPools:
    """Bounded per-class buffers of encoded samples; a sample is stored once, shared by its pools."""

    def __init__(self, classes: Sequence[int], pool_size: int, shot: int) -> None:
        self.pool_size = pool_size
        self.need = shot + 1  # a class is ready when it can give a query and `shot` other supports
        self.pools: dict[int, list[str]] = {c: [] for c in classes}
        self.seen: dict[int, int] = dict.fromkeys(classes, 0)
        self.store: dict[str, tuple[bytes, bytes]] = {}
        self.refs: dict[str, int] = {}
        self.ready: list[int] = []
        self.peak = 0

    def add(self, key: str, jpg: bytes, png: bytes, classes: Sequence[int], rng: np.random.Generator) -> None:
        """Offer a sample to each of its classes' pools (reservoir sampling once a pool is full)."""
        for c in classes:
            pool = self.pools.get(c)
            if pool is None:
                continue
            if key in pool:  # read again in a later pass while still buffered
                continue
            self.seen[c] += 1
            if len(pool) < self.pool_size:
                pool.append(key)
                if len(pool) == self.need:
                    self.ready.append(c)
                    self.ready.sort()
            else:
                j = int(rng.integers(self.seen[c]))
                if j >= self.pool_size:
                    continue
                self._release(pool[j])
                pool[j] = key
            self.refs[key] = self.refs.get(key, 0) + 1
            self.store[key] = (jpg, png)
        self.peak = max(self.peak, len(self.store))

    def _release(self, key: str) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key], self.store[key]

    def draw(self, way: int, shot: int, rng: np.random.Generator) -> Episode | None:
        """Classes uniform over the ready classes; None until `way` classes are ready."""
        if len(self.ready) < way:
            return None
        picks = rng.choice(len(self.ready), size=way, replace=False)
        class_ids = [self.ready[int(i)] for i in picks]
        first = self.pools[class_ids[0]]
        query = first[int(rng.integers(len(first)))]
        supports = []
        for c in class_ids:
            others = [k for k in self.pools[c] if k != query]
            idx = rng.choice(len(others), size=shot, replace=False)
            supports.append([others[int(i)] for i in idx])
        return Episode(class_ids, query, supports)


def _table_void(rule: str) -> str:
    """The `pipeline.folds` void argument a rule's lookup table starts from."""
    return "background" if rule == "background" else "ignore"


class EpisodeDecoder:
    """One training episode's samples -> numpy arrays: the training data rules every model sees.

    Transform (`augment`, see `TrainTransform`): "flip" = square resize to `image_size` and a horizontal
    flip with `flip_p` per image; "pfenet" = PFENet's scale / rotate / blur / flip / crop, the crop keeping
    the episode's class (query: the first way's) (query first, then the supports way-major), drawn from
    the caller's generator. Labels, as 256-entry lookup tables
    built by the rule functions themselves (one indexing pass per map):
    `query_full_label` = `pipeline.folds.training_label` (void by `void`, novel -> 255 under denet, 0
    under standard); `query_label` (0 bg, k+1 for way k) and `support_masks` (1 fg, 0 bg) are cut from
    `pipeline.folds.binary_label` (novel -> background); void in each by the method's rule `void`
    (VOID_RULES: background, ignore, query_ignore, foreground).
    `gpu_decode`: labels here, JPEG bytes and flips for `train.stream.normalize.normalize` to decode
    on the device.
    """

    def __init__(
        self,
        novel: Sequence[int],
        protocol: str,
        void: str,
        image_size: int,
        flip_p: float = 0.5,
        reduced: bool = True,
        gpu_decode: bool = False,
        augment: str = "flip",
    ) -> None:
        if void not in VOID_RULES:
            raise ValueError(f"void rule {void!r} is not {' | '.join(VOID_RULES)}")
        self.transform = TrainTransform(image_size, flip_p, reduced, augment)
        self.support_void, self.query_void = VOID_RULES[void]
        # void stays 255 in the tables when a rule keeps it (ignore) or makes it foreground (patched below)
        full_void = "ignore" if self.query_void == "ignore" else "background"
        self.full_lut = training_label(_VALUES, list(novel), protocol, full_void)
        self.support_lut = binary_label(_VALUES, list(novel), _table_void(self.support_void))
        self.query_lut = binary_label(_VALUES, list(novel), _table_void(self.query_void))
        self.gpu_decode = gpu_decode

    def support_table(self, class_id: int, class_ids: Sequence[int]) -> np.ndarray:
        """Raw label value -> a way's support mask value (1 fg, 0 bg, 255 ignored)."""
        table = binary_mask(self.support_lut, class_id, class_ids)
        if self.support_void == "foreground":
            table[VOID_PX] = 1
        return table

    def query_table(self, class_ids: Sequence[int]) -> np.ndarray:
        """Raw label value -> the query label (0 bg, k + 1 for way k, 255 ignored)."""
        table = episode_label(self.query_lut, class_ids)
        if self.query_void == "foreground":
            if len(class_ids) > 1:
                raise ValueError("train.void = foreground (SG-One's rule) is for 1-way training only")
            table[VOID_PX] = 1
        return table

    def __call__(
        self, episode: Episode, sample: Callable[[str], tuple[bytes, bytes]], rng: np.random.Generator
    ) -> dict[str, Any]:
        """Decode `episode`; `sample(key)` gives a sample's (jpg, png) bytes."""
        if self.gpu_decode:
            return self._labels_only(episode, sample, rng)
        img, label = self.transform(*sample(episode.query), rng, episode.class_ids[0])
        s_imgs, s_masks = [], []
        for c, keys in zip(episode.class_ids, episode.supports, strict=True):
            mask_lut = self.support_table(c, episode.class_ids)
            for k in keys:
                si, sl = self.transform(*sample(k), rng, c)
                s_imgs.append(si)
                s_masks.append(np.take(mask_lut, sl))
        return {
            "query_img": img,
            # np.take: the same lookup as lut[label] at about half the cost (no intp index copy)
            "query_label": np.take(self.query_table(episode.class_ids), label),
            "query_full_label": np.take(self.full_lut, label),
            "support_imgs": np.stack(s_imgs),
            "support_masks": np.stack(s_masks),
            "class_ids": episode.class_ids,
            "query_id": episode.query,
            "support_ids": episode.supports,
        }

    def _labels_only(
        self, episode: Episode, sample: Callable[[str], tuple[bytes, bytes]], rng: np.random.Generator
    ) -> dict[str, Any]:
        """`__call__` for `gpu_decode`: labels on the CPU, JPEG bytes and flips for the device."""
        jpg, png = sample(episode.query)
        label, flip = self.transform.label_only(png, rng)
        s_jpgs, s_masks, flips = [], [], [flip]
        for c, keys in zip(episode.class_ids, episode.supports, strict=True):
            mask_lut = self.support_table(c, episode.class_ids)
            for k in keys:
                s_jpg, s_png = sample(k)
                sl, sflip = self.transform.label_only(s_png, rng)
                s_jpgs.append(s_jpg)
                s_masks.append(np.take(mask_lut, sl))
                flips.append(sflip)
        return {
            "query_jpeg": jpg,
            "support_jpegs": s_jpgs,
            "img_flips": flips,
            "query_label": np.take(self.query_table(episode.class_ids), label),
            "query_full_label": np.take(self.full_lut, label),
            "support_masks": np.stack(s_masks),
            "class_ids": episode.class_ids,
            "query_id": episode.query,
            "support_ids": episode.supports,
        }


def check_shot(image_classes: dict[str, list[int]], classes: Sequence[int], way: int, shot: int) -> None:
    """Raise ConfigError (one line) when fewer than `way` classes have `shot` + 1 images.

    A class with fewer images never fills a pool far enough to give a query and `shot` supports;
    with too few such classes the stream would read shards for ever without drawing an episode.
    """
    from pipeline.config import ConfigError

    counts = dict.fromkeys(classes, 0)
    for cs in image_classes.values():
        for c in cs:
            if c in counts:
                counts[c] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if sum(n >= shot + 1 for _, n in ranked) >= way:
        return
    short = ", ".join(f"class {c} has {n}" for c, n in ranked[:3])
    fits = ranked[way - 1][1] - 1 if len(ranked) >= way else 0
    hint = f"lower train.shot to {fits} or less" if fits >= 1 else "the fold has too few training images"
    raise ConfigError(
        f"params: train.shot = {shot} is larger than the base classes' images: a {way}-way episode needs "
        f"{way} classes with shot + 1 = {shot + 1} images ({short}): {hint}"
    )


def worker_split() -> tuple[int, int]:
    """(index, count) of this DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def dist_rank() -> tuple[int, int]:
    """(rank, world_size) as webdataset's split_by_node sees them (RANK/WORLD_SIZE, torch.distributed)."""
    rank, world, _, _ = wds.utils.pytorch_worker_info()
    return rank, world


class SkipLog:
    """What a reader skipped, in `stats` (a DataLoader worker's own copy): shards, samples, samples read.

    `shard` is the webdataset error handler of the pipeline: it logs and counts a damaged shard and
    lets reading go on, unless more shards than the reader has failed in a row (nothing readable:
    ShardError). Only a shard read to its end (`shard_read`) breaks the row, not the samples a
    failing shard gave before its damage: a server whose every body is cut or never ends would
    otherwise keep a reader skipping for ever.
    """

    def __init__(self, shard_count: int) -> None:
        self.shard_count = shard_count
        self.failures = 0  # shards failed since the last shard read whole
        self.stats: dict[str, Any] = {
            "samples_read": 0,
            "skipped_shards": [],
            "skipped_samples": [],  # "<shard url>:<key>" of samples lacking a .jpg or .label.png
            "peak_buffered": 0,
        }

    def shard(self, exc: Exception) -> bool:
        url = getattr(exc, "url", "?")
        self.stats["skipped_shards"].append(url)
        log.warning("skipping shard %s (%d skipped so far): %s", url, len(self.stats["skipped_shards"]), exc)
        self.failures += 1
        if self.failures > self.shard_count:
            raise ShardError(f"no readable shard among {self.shard_count}: last was {url}") from exc
        return True

    def shard_read(self, url: str) -> None:
        """`url` was read to its end without damage: the row of failed shards is broken."""
        self.failures = 0

    def sample(self, sample: Sample, problem: str) -> None:
        self.stats["skipped_samples"].append(f"{sample.get('__url__')}:{sample['__key__']}")
        log.warning(
            "skipping sample %s of shard %s: %s (%d skipped so far)",
            sample["__key__"], sample.get("__url__"), problem, len(self.stats["skipped_samples"]),
        )  # fmt: skip

    def counts(self) -> tuple[int, int]:
        return len(self.stats["skipped_shards"]), len(self.stats["skipped_samples"])


class EpisodeDraw:
    """Samples in, episodes out: checks each sample, offers it to the class pools, draws episodes.

    A sample lacking its `.jpg`/`.label.png` or with an unreadable or too large image is skipped
    (`SkipLog.sample`); a run of `useless_limit` samples without a base class of the fold's train list
    stops the reader (ShardError). Episodes start once every base class is ready or `warmup` samples
    were read; each new sample pays for `episodes_per_sample` episodes (at most a batch in credit).
    """

    def __init__(
        self, stream: EpisodeStream, skips: SkipLog, rng: np.random.Generator, useless_limit: int
    ) -> None:
        self.s, self.skips, self.rng, self.useless_limit = stream, skips, rng, useless_limit
        self.pools = ClassPools(stream.base, stream.pool_size, stream.shot)

    def __call__(self, samples: Iterator[Sample]) -> Iterator[Episode]:
        s, pools, stats = self.s, self.pools, self.skips.stats
        credit, useless = 0.0, 0  # useless: samples in a row without a base class of the train list
        for n, sample in enumerate(samples, 1):
            stats["samples_read"] += 1
            classes = s.image_classes.get(sample["__key__"])
            useless = 0 if classes else useless + 1
            if useless > self.useless_limit:
                raise ShardError(
                    f"{useless} samples in a row hold no base class of the fold's train list (last: "
                    f"{sample['__key__']} of shard {sample.get('__url__')}): {FOLD_LISTS_ELSEWHERE}, or "
                    "this reader's shards hold no training image of the fold (use fewer loader workers)"
                )
            missing = [f"no .{ext} member" for ext in (JPG, LABEL) if ext not in sample]
            if not missing and not classes:
                continue
            problem = missing[0] if missing else sample_image_problem(sample)
            if problem:
                self.skips.sample(sample, problem)
                continue
            assert classes
            pools.add(sample["__key__"], sample[JPG], sample[LABEL], classes, self.rng)
            stats["peak_buffered"] = pools.peak
            if n < s.warmup and len(pools.ready) < len(s.base):
                continue  # let the pools fill so the first episodes are class-balanced too
            credit = min(credit + s.episodes_per_sample, float(s.batch_size))
            while credit >= 1.0 and (episode := pools.draw(s.way, s.shot, self.rng)) is not None:
                credit -= 1.0
                yield episode


class EpisodeStream(IterableDataset):
    """Batches of training episodes streamed from shards; use with `DataLoader(ds, batch_size=None)`.

    `shards`: a split folder/URL (its manifest.json lists the shards) or an explicit list of URLs.
    `image_classes`: image id -> its base classes under the fold (from `fold<i>/train.txt`).
    `episodes_per_epoch` is counted per rank (webdataset's `with_epoch` advice for DDP) and divided
    among the workers; call `set_epoch(e)` each epoch so shard order and draws change reproducibly.
    `episodes_per_sample` sets how many episodes each newly read sample pays for (reuse rate).
    `gpu_decode`: labels are decoded here, images travel as JPEG bytes and `train.stream.normalize.normalize`
    decodes them on its device with nvJPEG (pays when the loader's CPUs are the bottleneck).
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        image_classes: dict[str, list[int]],
        base: Sequence[int],
        novel: Sequence[int],
        *,
        way: int = 1,
        shot: int = 1,
        batch_size: int = 8,
        image_size: int = 321,
        pool_size: int = 64,
        protocol: str = "denet",
        void: str = "ignore",
        seed: int = 0,
        episodes_per_epoch: int = 1000,
        episodes_per_sample: float = 1.0,
        resampled: bool = False,
        reduced: bool = True,
        flip_p: float = 0.5,
        rank: int | None = None,
        world_size: int | None = None,
        allow_pipe: bool = False,
        gpu_decode: bool = False,
        remote: RemoteReads = DEFAULT_REMOTE,
        augment: str = "flip",
    ) -> None:
        super().__init__()
        listed = split_shards(shards) if isinstance(shards, str) else [{"url": u} for u in shards]
        self.remote = remote
        # a remote stream may not go beyond its shard's size from the manifest
        self.shard_sizes = {s["url"]: int(s["bytes"]) for s in listed if int(s.get("bytes", -1)) >= 0}
        self.urls = [s["url"] for s in listed]
        if not self.urls:
            raise ShardError(f"no shards in {shards!r}")
        # a member may claim at most its shard's size from the manifest (MAX_MEMBER_BYTES if unknown)
        self.member_limits = {s["url"]: member_limit(s.get("bytes")) for s in listed}
        # a shard that ends early at a header boundary is truncated, not short (manifest counts)
        self.expected_samples = {s["url"]: int(s["num_samples"]) for s in listed if "num_samples" in s}
        self.useless_limit = max(USELESS_SAMPLES, sum(max(0, s.get("num_samples", 0)) for s in listed))
        base_set = set(base)
        if base_set & set(novel):
            raise ValueError("base and novel classes overlap")
        # test classes never reach a pool: filter the pair lists by the fold's base classes again
        self.image_classes = {
            k: [c for c in v if c in base_set] for k, v in image_classes.items() if base_set.intersection(v)
        }
        self.base, self.novel = sorted(base_set), list(novel)
        if way > len(self.base):
            raise ValueError(f"way={way} exceeds the {len(self.base)} base classes")
        if pool_size < shot + 1:  # no pool could ever give a query and `shot` supports: no episode, ever
            raise ValueError(f"pool_size={pool_size} is smaller than shot + 1 = {shot + 1}")
        check_shot(self.image_classes, self.base, way, shot)
        self.way, self.shot, self.batch_size = way, shot, batch_size
        self.image_size, self.pool_size, self.protocol = image_size, pool_size, protocol
        self.seed, self.epoch = seed, 0
        self.episodes_per_epoch, self.episodes_per_sample = episodes_per_epoch, episodes_per_sample
        self.resampled, self.allow_pipe, self.gpu_decode = resampled, allow_pipe, gpu_decode
        self.rank, self.world_size = rank, world_size
        self.decoder = EpisodeDecoder(
            self.novel, protocol, void, image_size, flip_p, reduced, gpu_decode, augment
        )
        self.warmup = len(self.base) * (shot + 1) * 2
        self.skips = SkipLog(len(self.urls))
        self.stats = self.skips.stats

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _placement(self) -> tuple[int, int]:
        """(global reader id, readers): rank-major over (rank, DataLoader worker)."""
        rank, world = (self.rank, self.world_size) if self.rank is not None else dist_rank()
        worker, workers = worker_split()
        return rank * workers + worker, (world or 1) * workers

    def shard_sequence(self, gid: int, total: int) -> Iterator[str]:
        """Endless shard urls of reader `gid` of `total` (disjoint unless resampled).

        Resampled: webdataset's ResampledShards, seeded per (seed, epoch) and reader. Otherwise one
        SimpleShardList permutation per epoch, the same on every reader, split by rank and worker in
        one slice (split_by_node + split_by_worker), then the reader's own set reshuffled every pass.
        """
        if self.resampled:
            shards = wds.ResampledShards(
                self.urls, seed=make_seed(self.seed, self.epoch), worker_seed=lambda: gid, deterministic=True
            )
            yield from (s["url"] for s in shards)
            return
        if len(self.urls) < total:
            raise ShardError(
                f"{len(self.urls)} shards for {total} readers (ranks x workers): every reader needs its own "
                "shard; write more shards (data.min_shards), use fewer workers, or set resampled=True"
            )
        epoch_order = wds.SimpleShardList(self.urls, seed=make_seed(self.seed, self.epoch))
        mine = [s["url"] for s in itertools.islice(epoch_order, gid, None, total)]
        for pass_no in itertools.count():
            passes = wds.SimpleShardList(mine, seed=make_seed(self.seed, self.epoch, gid, pass_no))
            yield from (s["url"] for s in passes)

    def samples(self, shards: Iterator[dict[str, Any]]) -> Iterator[Sample]:
        """`{"url"}` dicts -> samples: webdataset's tar stages with train.stream.shard_io's member checks."""
        limits, expected, sizes = self.member_limits, self.expected_samples, self.shard_sizes
        handler, read_whole = self.skips.shard, self.skips.shard_read
        return tar_samples(shards, handler, self.allow_pipe, limits, expected, self.remote, sizes, read_whole)

    def pipeline(self, gid: int, total: int, rng: np.random.Generator) -> wds.DataPipeline:
        """The reader's webdataset pipeline; one comment per stage says what flows after it."""
        draw = EpisodeDraw(self, self.skips, rng, self.useless_limit)
        self._pools = draw.pools
        collate = functools.partial(collate_train, way=self.way, shot=self.shot)
        return wds.DataPipeline(
            # {"url"}: this reader's shards, endless (see shard_sequence)
            lambda: ({"url": u} for u in self.shard_sequence(gid, total)),
            # {"__key__", "jpg", "label.png", ...}: members grouped by key, damaged shards skipped
            self.samples,
            # Episode: ids drawn from the class pools
            draw,
            # dict of numpy arrays: decoded, resized, flipped, labels by the fold's rules
            lambda episodes: (self.decoder(e, draw.pools.store.__getitem__, rng) for e in episodes),
            # the design.md batch dict
            wds.batched(self.batch_size, collation_fn=collate),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gid, total = self._placement()
        worker, workers = worker_split()
        per_rank = math.ceil(self.episodes_per_epoch / self.batch_size)
        quota = per_rank // workers + (1 if worker < per_rank % workers else 0)
        rng = np.random.default_rng([self.seed, self.epoch, gid])
        before = self.skips.counts()
        batches = iter(self.pipeline(gid, total, rng))
        try:
            for batch in itertools.islice(batches, quota):
                shards, samples = self.skips.counts()
                # the counts live in this worker: each batch carries them to the trainer (dvclive)
                batch["data_skips"] = (gid, shards - before[0], samples - before[1])
                yield batch
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()


def _stack(items: list[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([it[key] for it in items]))


def collate_train(items: list[dict[str, Any]], way: int, shot: int) -> dict[str, Any]:
    """Stack decoded episodes (numpy, HWC) into the design.md batch dict (torch, CHW, batch first)."""
    b = len(items)
    h, w = items[0]["query_label"].shape
    labels = {
        "query_label": _stack(items, "query_label"),
        "query_full_label": _stack(items, "query_full_label"),
        "support_masks": _stack(items, "support_masks").view(b, way, shot, h, w),
        "class_ids": torch.tensor([it["class_ids"] for it in items], dtype=torch.int64),
        "query_id": [it["query_id"] for it in items],
        "support_ids": [it["support_ids"] for it in items],
    }
    if "query_jpeg" in items[0]:  # gpu_decode: train.stream.normalize.normalize decodes on the device
        return {
            **labels,
            "query_jpeg": [it["query_jpeg"] for it in items],
            "support_jpegs": [it["support_jpegs"] for it in items],
            "img_flips": torch.tensor([it["img_flips"] for it in items], dtype=torch.bool),
        }
    q = np.stack([it["query_img"] for it in items])  # B H W 3
    s = np.stack([it["support_imgs"] for it in items]).reshape(b, way, shot, h, w, 3)
    return {
        **labels,
        # numpy's transposing copy is ~30x faster than torch's permute().contiguous() for uint8
        "query_img": torch.from_numpy(np.ascontiguousarray(q.transpose(0, 3, 1, 2))),
        "support_imgs": torch.from_numpy(np.ascontiguousarray(s.transpose(0, 1, 2, 5, 3, 4))),
    }
