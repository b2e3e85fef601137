"""Soak: the sampler streams 10,000 episodes through 2 DataLoader workers with flat memory (RSS printed)."""

import psutil
import pytest
from torch.utils.data import DataLoader

from train.stream.index import read_fold, read_pairs
from train.stream.sampler import EpisodeStream

pytestmark = pytest.mark.heavy  # long streaming runs

EPISODES = 10_000
BATCH = 16
WARM = 20  # batches before the first reading: pools full, allocator arenas and imports settled
LAST = EPISODES // BATCH - 8  # the second reading, while both workers still run (they prefetch ahead)
GROWTH_MB = 16.0  # per process (a leak of ~2 kB per episode fails); the pools are bounded by design


def _rss_mb(procs: list[psutil.Process]) -> list[float]:
    return [p.memory_info().rss / 2**20 for p in procs]


def test_10k_episodes_with_two_workers_keep_memory_flat(tiny_data, capsys):
    base, novel = read_fold(str(tiny_data["folds"]), 0)
    pairs = read_pairs((tiny_data["folds"] / "fold0" / "train.txt").read_text())
    stream = EpisodeStream(
        str(tiny_data["shards"] / "train"), pairs, base, novel, way=2, shot=1, batch_size=BATCH,
        image_size=33, pool_size=16, episodes_per_epoch=EPISODES, seed=3,
    )  # fmt: skip
    main = psutil.Process()
    before = {c.pid for c in main.children(recursive=True)}
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    episodes, start, end = 0, None, None
    procs: list[psutil.Process] = []
    for i, batch in enumerate(loader, 1):
        episodes += batch["query_img"].shape[0]
        if i == WARM:
            procs = [main, *(c for c in main.children(recursive=True) if c.pid not in before)]
            assert len(procs) == 3  # the main process and the two loader workers
            start = _rss_mb(procs)
        if i == LAST:
            end = _rss_mb(procs)
    assert episodes == EPISODES and start is not None and end is not None
    names = ["main", "worker a", "worker b"]
    for when, values in ((WARM, start), (LAST, end)):
        with capsys.disabled():  # shown in every run's output, not only on failure
            print(
                f"\nsoak RSS MB at batch {when}: "
                + ", ".join(f"{n} {v:.1f}" for n, v in zip(names, values, strict=True))
            )
    for name, a, b in zip(names, start, end, strict=True):
        assert b <= a + GROWTH_MB, f"{name}: RSS grew from {a:.1f} to {b:.1f} MB over {EPISODES} episodes"
