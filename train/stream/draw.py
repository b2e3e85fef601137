"""Episode draws, pure functions of pair lists, index rows and a seed (docs/protocol.md).

Which images may form an episode under a protocol (`episode_pools`, `query_allowed`: the protocol's
rules), the fixed test draws, the training-manifest draws and the test-time flips. No I/O.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import ConfigError
from pipeline.errors import UserError
from pipeline.protocol import protocol_rules


class DrawError(UserError, ValueError):
    """Too few images for the episodes asked for (lower sampler.test_episodes or use more data)."""


# -- test-episode manifest -----------------------------------------------------------------------
def episodes_digest(episodes: list[dict[str, Any]]) -> str:
    """sha256 of the episodes as compact sorted JSON (`separators=(",", ":")`, `sort_keys=True`)."""
    blob = json.dumps(episodes, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def episode_pools(
    pairs: dict[str, list[int]], novel: Sequence[int], protocol: str, way: int
) -> dict[int, list[str]]:
    """Images that may be the query or a support of each novel class, sorted (docs/protocol.md).

    `pairs`: test.txt, every (image, novel class) passing the presence rule. denet 1-way: images where
    exactly one novel class passes it (the release's item_class.pair, dataset/voc_sbd.py:364-372: other
    novel classes below the threshold are allowed). denet 2-way and standard: every pair (the release's
    unlimited_item_class.pair for way > 1, voc_sbd.py:347-348, 373-377).
    """
    novel_set = set(novel)
    single_novel = protocol_rules(protocol).single_novel_pools
    pools: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        present = [c for c in pairs[image_id] if c in novel_set]
        if single_novel and way == 1 and len(present) != 1:
            continue
        for c in present:
            pools[c].append(image_id)
    return dict(pools)


def query_allowed(query_novel: set[int], episode: Sequence[int], protocol: str) -> bool:
    """The extra query rule for a query already in the first class's pool.

    denet with way > 1: no novel class outside the episode's may show a single pixel at the presence
    size (the release redraws the query until none does, voc_sbd.py:436-446, with whole_item_class.pair
    holding every novel class present at all). 1-way denet and standard: none (PANet-style N-way
    queries hold 1..N of the episode classes).
    """
    if not protocol_rules(protocol).query_only_episode_novel or len(episode) == 1:
        return True
    return query_novel <= set(episode)


def novel_in_images(
    pairs: dict[str, list[int]], image_classes: dict[str, dict[int, int]], novel: Sequence[int]
) -> dict[str, set[int]]:
    """Per test.txt image: the novel classes with at least one pixel at the presence size (index.tsv
    presence_px > 0; its own test.txt classes at least): what `query_allowed` checks."""
    novel_set = set(novel)
    return {
        k: {c for c, px in image_classes.get(k, {}).items() if c in novel_set and px > 0}
        | {c for c in cs if c in novel_set}
        for k, cs in pairs.items()
    }


def episode_queries(
    pools: dict[int, list[str]], novel_of: dict[str, set[int]], classes: Sequence[int], protocol: str
) -> list[str]:
    """The images that may be the query of an episode of `classes` (first class's pool, `query_allowed`)."""
    return [k for k in pools[classes[0]] if query_allowed(novel_of[k], classes, protocol)]


def episodes_with_every_way(episodes: list[dict[str, Any]], pairs: dict[str, list[int]]) -> int:
    """How many episodes' queries hold every episode class by the presence rule (test.txt pairs)."""
    return sum(set(ep["classes"]) <= set(pairs.get(ep["query"], ())) for ep in episodes)


def expected_with_every_way(
    pairs: dict[str, list[int]],
    image_classes: dict[str, dict[int, int]],
    novel: Sequence[int],
    *,
    way: int,
    shot: int,
    protocol: str,
) -> float:
    """The share of 2-way episodes whose query holds both classes that the draw's rule implies.

    The release's rule and `draw_test_episodes` alike: first class balanced over the usable classes,
    the second uniform among the others, the query uniform over `episode_queries`. So the exact
    expectation is the mean, over ordered class pairs, of the share of allowed queries holding the
    second class; a drawn manifest is compared with it (`main` prints both).
    """
    if way != 2:
        raise ValueError("expected_with_every_way is defined for 2-way episodes")
    pools = episode_pools(pairs, novel, protocol, way)
    novel_of = novel_in_images(pairs, image_classes, novel)
    usable = sorted(c for c in pools if len(pools[c]) >= shot + 1)
    shares = []
    for first in usable:
        for second in (c for c in usable if c != first):
            queries = episode_queries(pools, novel_of, [first, second], protocol)
            if queries:
                shares.append(sum(second in pairs[q] for q in queries) / len(queries))
    return float(np.mean(shares)) if shares else 0.0


def eval_flips(count: int, images_per_episode: int, seed: int = 0) -> np.ndarray:
    """bool [count, images_per_episode]: which test images are mirrored (the denet protocol).

    The release's test() seeds Python's `random` with 0 (trainers.py fix_randomness) and each episode
    then passes its supports (way-major) and its query through RandomHorizontallyFlip(p=0.5), one
    `random.random() < 0.5` each, in episode order. Here the same stream comes from a local
    `random.Random(seed)`, indexed by the episode's position in the manifest.
    """
    draw = random.Random(seed).random
    return np.array([[draw() < 0.5 for _ in range(images_per_episode)] for _ in range(count)], dtype=bool)


def left_out_classes(
    pairs: dict[str, list[int]], novel: Sequence[int], protocol: str, way: int
) -> dict[str, str]:
    """{class id: why} for the novel classes no test episode can hold (fewer than 2 pool images)."""
    pools = episode_pools(pairs, novel, protocol, way)
    n_pairs = {c: sum(c in cs for cs in pairs.values()) for c in novel}
    out = {}
    for c in novel:
        n_pool = len(pools.get(c, ()))
        if n_pool >= 2:
            continue
        if n_pairs[c] == 0:
            out[str(c)] = "no test pair (the folds stage says why)"
        elif n_pairs[c] == 1:
            out[str(c)] = "1 test pair: an episode needs a query and a support"
        else:
            out[str(c)] = (f"{n_pool} of its {n_pairs[c]} test images show no other novel class "
                           f"(the {protocol} {way}-way query rule)")  # fmt: skip
    return out


def draw_test_episodes(
    pairs: dict[str, list[int]],
    image_classes: dict[str, dict[int, int]],
    novel: Sequence[int],
    *,
    way: int,
    shot: int,
    count: int,
    seed: int,
    protocol: str,
    shot_key: str = "shot",
) -> list[dict[str, Any]]:
    """Class-balanced fixed test episodes from the fold's test pairs.

    The first class of episode e is the e-th of a seeded round-robin over the novel classes with
    at least shot + 1 images (so classes get counts within one of each other; a class with 2..shot
    images is a ConfigError telling to lower `shot`, one with a single image is left out); the other ways are
    drawn uniformly from the rest. Query and supports of a class come from its `episode_pools` pool; the
    query is a pool image of the first class that passes `query_allowed` (novel classes by index.tsv's
    presence_px > 0); supports of each class are `shot` distinct pool images, never the query (the
    release may draw the query as a support of the other way of a 2-way episode: not here).
    """
    rng = np.random.default_rng([seed, way, shot])
    by_class = episode_pools(pairs, novel, protocol, way)
    novel_of = novel_in_images(pairs, image_classes, novel)
    # a class with 2..shot images could be tested at a lower shot: dropping it would silently change
    # the benchmark's class set, so the user lowers `shot` instead (one image: no episode at any shot)
    short = {c: len(by_class[c]) for c in sorted(by_class) if 2 <= len(by_class[c]) < shot + 1}
    if short:
        c, n = min(short.items(), key=lambda item: (item[1], item[0]))
        raise ConfigError(
            f"params: {shot_key} = {shot} is larger than novel class {c}'s {n} test images allow (a query "
            f"and {n - 1} supports): lower {shot_key} to {n - 1} or less"
        )
    usable = sorted(c for c in by_class if len(by_class[c]) >= shot + 1)
    if len(usable) < way:
        raise ConfigError(
            f"params: only {len(usable)} novel classes have {shot + 1} test images; {way}-way needs {way}: "
            f"lower way (or {shot_key})"
        )
    episodes: list[dict[str, Any]] = []
    order: list[int] = []
    attempts = 0
    while len(episodes) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise DrawError(f"could not draw {count} test episodes that satisfy the {protocol} query rule")
        if not order:
            order = [usable[int(i)] for i in rng.permutation(len(usable))]
        first = order[0]
        rest = [c for c in usable if c != first]
        classes = [first] + [rest[int(i)] for i in rng.choice(len(rest), size=way - 1, replace=False)]
        queries = episode_queries(by_class, novel_of, classes, protocol)
        if not queries:
            continue
        query = queries[int(rng.integers(len(queries)))]
        supports = []
        for c in classes:
            pool = [k for k in by_class[c] if k != query]
            supports.append([pool[int(i)] for i in rng.choice(len(pool), size=shot, replace=False)])
        order.pop(0)
        episodes.append({"query": query, "classes": classes, "supports": supports})
    return episodes


# -- training-episode manifest (train.episodes: manifest) ---------------------------------------
def draw_train_episodes(
    pairs: dict[str, list[int]],
    base: Sequence[int],
    *,
    way: int,
    shot: int,
    per_class: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The release's fixed training set (dataset/voc_sbd.py:386-463), drawn once from the fold's train.txt.

    For every base class c in sorted order: `per_class` episodes whose query and `shot` supports are
    distinct images of c's pool (train.txt pairs of c), drawn uniformly; a class with n images where
    n^2 < per_class is left out, as released (voc_sbd.py:413-414; it never happens on the real data),
    and so is one with fewer than shot + 1 images. Then one shuffle of the whole list. way > 1 (the
    release trains 1-way only): the other ways' classes are drawn uniformly from the other usable base
    classes, their supports from their pools, never the query.
    """
    rng = np.random.default_rng([seed, way, shot, 7])
    base_set = set(base)
    pools: dict[int, list[str]] = defaultdict(list)
    for image_id in sorted(pairs):
        for c in pairs[image_id]:
            if c in base_set:
                pools[c].append(image_id)
    usable = [c for c in sorted(pools) if len(pools[c]) ** 2 >= per_class and len(pools[c]) >= shot + 1]
    if len(usable) < way:
        raise ConfigError(
            f"params: only {len(usable)} base classes have the images for {per_class} training episodes each "
            f"(n^2 >= train.episodes_per_class and n >= train.shot + 1): lower train.episodes_per_class"
        )
    episodes: list[dict[str, Any]] = []
    for first in usable:
        rest = [c for c in usable if c != first]
        for _ in range(per_class):
            pool = pools[first]
            picks = rng.choice(len(pool), size=shot + 1, replace=False)
            query = pool[int(picks[0])]
            classes = [first] + [rest[int(i)] for i in rng.choice(len(rest), size=way - 1, replace=False)]
            supports = [[pool[int(i)] for i in picks[1:]]]
            for c in classes[1:]:
                others = [k for k in pools[c] if k != query]
                supports.append([others[int(i)] for i in rng.choice(len(others), size=shot, replace=False)])
            episodes.append({"query": query, "classes": classes, "supports": supports})
    return [episodes[int(i)] for i in rng.permutation(len(episodes))]
