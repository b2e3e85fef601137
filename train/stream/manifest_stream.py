"""Training batches from a fixed episode manifest (`train.episodes: manifest`), the release's recipe.

The DENet release draws its training episodes once (1000 per base class) and reshuffles that fixed set
every epoch (dataset/voc_sbd.py:386-463, trainers.py:913 `DataLoader(shuffle=True)`). Here the manifest
(`train.episodes.train_manifest`) is the same kind of file as a test manifest, and its samples are read
by key from the training shards (one ranged read each, like evaluation), so nothing is copied first.

The episodes form an endless sequence: pass k is a permutation of the manifest drawn from (seed, k);
global batch g holds positions g*B .. g*B + B - 1 of it. Under torchrun rank r takes global batches
step * world + r. `set_epoch(e)` selects the trainer's epoch (`batches_per_epoch` steps). DataLoader
workers take this epoch's batches round-robin, so the loader yields them in order whatever the worker
count, and every episode's flips come from its own position: a run is the same with 0 or 8 workers.
A sample that cannot be read is an error (ShardError), as in evaluation: a fixed set never shrinks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from train.stream.by_key import SampleReader
from train.stream.manifests import ManifestError
from train.stream.sampler import (
    FOLD_LISTS_ELSEWHERE,
    Episode,
    EpisodeDecoder,
    collate_train,
    dist_rank,
    worker_split,
)
from train.stream.shard_io import DEFAULT_REMOTE, RemoteReads, ShardError


class ManifestEpisodes(IterableDataset):
    """Batches of a training-episode manifest; use with `DataLoader(ds, batch_size=None)`."""

    def __init__(
        self,
        manifest: dict[str, Any],
        split_url: str,
        novel: Sequence[int],
        *,
        batch_size: int = 8,
        batches_per_epoch: int = 1000,
        image_size: int = 321,
        protocol: str = "denet",
        void: str = "background",
        seed: int = 0,
        reduced: bool = True,
        flip_p: float = 0.5,
        rank: int | None = None,
        world_size: int | None = None,
        gpu_decode: bool = False,
        remote: RemoteReads = DEFAULT_REMOTE,
        augment: str = "flip",
    ) -> None:
        super().__init__()
        self.episodes = [
            Episode([int(c) for c in ep["classes"]], ep["query"], [list(s) for s in ep["supports"]])
            for ep in manifest["episodes"]
        ]
        if not self.episodes:
            raise ManifestError("the training-episode manifest is empty")
        self.way, self.shot = manifest["way"], manifest["shot"]
        self.reader = SampleReader(split_url, remote)
        keys = {k for ep in self.episodes for k in (ep.query, *(s for way in ep.supports for s in way))}
        missing = sorted(keys - self.reader.locations.keys())
        if missing:  # a fixed set never shrinks: one missing image stops the run before step 1
            raise ShardError(
                f"{len(missing)} of the {len(keys)} images of the training episodes are in no shard of "
                f"{split_url} (first: {missing[0]}): {FOLD_LISTS_ELSEWHERE}"
            )
        self.decoder = EpisodeDecoder(novel, protocol, void, image_size, flip_p, reduced, gpu_decode, augment)
        self.batch_size, self.batches_per_epoch, self.seed = batch_size, batches_per_epoch, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._orders: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, pass_no: int) -> np.ndarray:
        """The permutation of the manifest used by pass `pass_no` over it."""
        if pass_no not in self._orders:
            self._orders = {
                pass_no: np.random.default_rng([self.seed, pass_no, 5]).permutation(len(self.episodes))
            }
        return self._orders[pass_no]

    def episode_at(self, position: int) -> Episode:
        """The episode at `position` of the endless reshuffled sequence."""
        pass_no, i = divmod(position, len(self.episodes))
        return self.episodes[int(self.order(pass_no)[i])]

    def batch(self, global_batch: int) -> dict[str, Any]:
        """Global batch `global_batch`, decoded and collated (flips drawn from each episode's position).

        The batch's samples are fetched first, their ranged reads in flight together."""
        positions = range(global_batch * self.batch_size, (global_batch + 1) * self.batch_size)
        episodes = [self.episode_at(p) for p in positions]
        samples = self.reader.fetch_many(
            [k for e in episodes for k in [e.query, *itertools.chain(*e.supports)]]
        )

        def pair(key: str) -> tuple[bytes, bytes]:
            return samples[key]["jpg"], samples[key]["label.png"]

        items = [
            self.decoder(episode, pair, np.random.default_rng([self.seed, position, 11]))
            for position, episode in zip(positions, episodes, strict=True)
        ]
        return collate_train(items, self.way, self.shot)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = (self.rank, self.world_size) if self.rank is not None else dist_rank()
        world = world or 1
        worker, workers = worker_split()
        first = self.epoch * self.batches_per_epoch
        for step in range(first + worker, first + self.batches_per_epoch, workers):
            batch = self.batch(step * world + rank)
            batch["data_skips"] = (rank * workers + worker, 0, 0)  # reads never skip: a failure raises
            yield batch
