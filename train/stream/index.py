"""The folds stage's pair lists and fold classes, and a split's index.tsv, read from a folder or a URL."""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from dataclasses import dataclass

from pipeline.shard_format import check_shard_name, index_rows
from train.stream.shard_io import (
    check_split_complete,
    join_url,
    read_text,
)


# -- fold pair lists ---------------------------------------------------------------------------
def read_pairs(text: str) -> dict[str, list[int]]:
    """`<image_id>__<class:02d>` lines -> image id -> sorted class ids."""
    out: dict[str, list[int]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        image_id, sep, cls = line.rpartition("__")
        if not sep:
            raise ValueError(f"pair line {line!r} is not <image_id>__<class>")
        out[image_id].append(int(cls))
    return {k: sorted(v) for k, v in out.items()}


def read_fold(folds: str, fold: int) -> tuple[list[int], list[int]]:
    """(base, novel) from `fold<i>.json`."""
    info = json.loads(read_text(join_url(folds, f"fold{fold}.json")))
    return list(info["base"]), list(info["novel"])


# -- index.tsv ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    shard: str
    start: int
    end: int | None  # None: to the end of the shard


def read_index(split_url: str) -> tuple[dict[str, dict[int, int]], dict[str, Location]]:
    """(image id -> {class id: presence_px}, image id -> byte range in its shard) from a split's index.tsv.

    presence_px: the class's pixels at the presence size (`data.presence_size`), 0 when resizing
    removed them; the query rules read "holds a class" from it.

    The split must belong to a complete dataset (`check_split_complete`); every `shard` cell must be
    a plain file name of the split folder (an index is data, never a path to elsewhere).
    """
    check_split_complete(split_url)
    index_url = join_url(split_url, "index.tsv")
    classes: dict[str, dict[int, int]] = defaultdict(dict)
    offsets: dict[str, tuple[str, int]] = {}
    for line, row in index_rows(read_text(index_url).splitlines(), index_url):
        shard = check_shard_name(row["shard"], f"{index_url}:{line}")
        classes[row["image_id"]][row["class_id"]] = row["presence_px"]
        offsets[row["image_id"]] = (shard, row["offset"])
    per_shard: dict[str, list[int]] = defaultdict(list)
    for shard, off in offsets.values():
        per_shard[shard].append(off)
    for offs in per_shard.values():
        offs.sort()
    locs = {}
    for key, (shard, off) in offsets.items():
        offs = per_shard[shard]
        i = bisect.bisect_right(offs, off)
        locs[key] = Location(shard, off, offs[i] if i < len(offs) else None)
    return dict(classes), locs
