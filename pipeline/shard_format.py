"""What a shards folder may hold, checked by every reader: plain shard names, bounded members, no
sparse members, bounded image sizes, and the dataset's completion record.

Shards, manifests and indexes are data that may come from elsewhere (a mirror, a bucket, a colleague):
no size or name in them is trusted. These are small functions on one header or one record, so any
reader calls the same ones: `pipeline.verify` (tarfile), `train.stream.shard_io.checked_tar_files` (the
webdataset pipeline's tar stage) and evaluation's ranged reads (`train.stream.shard_io.parse_tar_fragment`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# Void in every label map the shards hold: VOC's border band, COCO crowd under data.coco_crowd=ignore.
# Losses and metrics ignore it (or count it as background where the protocol says so).
IGNORE_INDEX = 255

COMPLETE = "complete.json"  # <dataset>/complete.json: written last by the shards stage (docs/design.md)

# What the shards stage writes (`train-000000.tar`): no path separator, no `..`, no scheme, no `pipe:`.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# The largest member a sample may hold. A sample holds its image's published JPEG (VOC and COCO files
# are under 1 MB), a mode-L label PNG of the same size and a small JSON; MAX_IMAGE_PIXELS below caps
# a label PNG near 36 MB uncompressed. 64 MiB keeps any honest member and refuses a header that
# claims gigabytes (one read of that size would take the memory of a loader worker).
MAX_MEMBER_BYTES = 64 << 20

# The largest image the stages decode, in pixels. The official images are at most 640 x 640 (COCO)
# and 500 x 500 (VOC, SBD); 6000 x 6000 leaves ~90x room for other data while one decoded RGB image
# stays near 100 MB (a 20000 x 20000 JPEG would need 1.2 GB per copy, in every loader worker).
MAX_IMAGE_PIXELS = 6000 * 6000


class ShardError(RuntimeError):
    """A shard or shards folder is missing, incomplete, truncated, corrupt or unsafe; the message names it."""


def check_shard_name(name: object, where: str) -> str:
    """`name` if it is a plain file name in the split folder; else ShardError naming `where` it came from.

    A manifest or index is data, never a path out of the split, a URL or a `pipe:` command.
    """
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ShardError(f"{where}: shard name {name!r} is not a plain file name")
    return name


# A split's index.tsv: one row per (image, class present), an image's rows together (design.md).
INDEX_COLUMNS = [
    *("image_id", "split", "class_id", "area_px", "fraction", "presence_px", "presence_total"),
    *("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"),
    *("ignore_px", "height", "width", "shard", "offset"),
]
INDEX_TEXT_COLUMNS = ("image_id", "split", "shard")  # the rest are ints, but `fraction` (a float)


def index_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row by column name) of an index.tsv's lines, header first; ints and the float
    `fraction` converted. Every reader of an index reads it through here (streamed: an image's rows
    arrive together). ShardError naming `where` and the line for a wrong header or a bad row."""
    it = iter(lines)
    header = next(it, "").rstrip("\n").split("\t")
    if header != INDEX_COLUMNS:
        raise ShardError(f"{where}:1: header {header} is not the index header {INDEX_COLUMNS}")
    for line_no, line in enumerate(it, start=2):
        cells = line.rstrip("\n").split("\t")
        if len(cells) != len(INDEX_COLUMNS):
            raise ShardError(f"{where}:{line_no}: {len(cells)} cells, an index row has {len(INDEX_COLUMNS)}")
        row: dict[str, Any] = dict(zip(INDEX_COLUMNS, cells, strict=True))
        try:
            for name in INDEX_COLUMNS:
                if name == "fraction":
                    row[name] = float(row[name])
                elif name not in INDEX_TEXT_COLUMNS:
                    row[name] = int(row[name])
        except ValueError as exc:
            raise ShardError(f"{where}:{line_no}: {exc}") from None
        yield line_no, row


def member_limit(shard_bytes: int | None) -> int:
    """The most bytes one member of a shard may claim: the shard's own size (from its manifest, when
    known) or MAX_MEMBER_BYTES, whichever is smaller."""
    if shard_bytes is None or shard_bytes < 0:
        return MAX_MEMBER_BYTES
    return min(MAX_MEMBER_BYTES, int(shard_bytes))


def check_member(
    shard: str, name: str, size: int, *, sparse: bool = False, limit: int = MAX_MEMBER_BYTES
) -> None:
    """Refuse a member header before its data is read: GNU sparse members (a few bytes on disk that
    expand to any size when read) and sizes beyond `limit` (see `member_limit`)."""
    if sparse:
        raise ShardError(f"shard {shard}: member {name!r} is a sparse file (shards never hold one)")
    if size < 0 or size > limit:
        raise ShardError(f"shard {shard}: member {name!r} claims {size} bytes, more than the {limit} allowed")


def image_size_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused (None if it is not): more than MAX_IMAGE_PIXELS pixels."""
    if width * height > MAX_IMAGE_PIXELS:
        return (
            f"image is {width}x{height} = {width * height} pixels, more than the {MAX_IMAGE_PIXELS} "
            "allowed (pipeline.shard_format.MAX_IMAGE_PIXELS)"
        )
    return None


def encoded_image_problem(data: bytes) -> str | None:
    """Why encoded image bytes (JPEG, PNG) are refused before any pixel is decoded: an unreadable
    header, or more than MAX_IMAGE_PIXELS pixels (read from the header alone). None if fine."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return image_size_problem(*im.size)
    except Image.DecompressionBombError as exc:  # PIL's own, larger bound: refused before ours
        return f"image is too large to decode ({exc})"
    except OSError as exc:  # PIL.UnidentifiedImageError included
        return f"not a readable image ({exc})"


def sample_image_problem(sample: Mapping[str, Any]) -> str | None:
    """Why a sample's `.jpg` or `.label.png` must not be decoded (`encoded_image_problem`, headers only),
    as ".<ext>: <problem>", or None. Streaming skips such a sample; a ranged read refuses it."""
    for ext in ("jpg", "label.png"):
        problem = encoded_image_problem(sample[ext])
        if problem:
            return f".{ext}: {problem}"
    return None


def completion_record(dataset: str, protocol: str, splits: Mapping[str, int]) -> dict[str, Any]:
    """The dataset's completion record: written after every split, so its presence means all are complete."""
    return {
        "dataset": dataset,
        "protocol": protocol,
        "splits": {name: {"num_samples": int(n)} for name, n in sorted(splits.items())},
    }


def check_completion(record: Any, where: str, split: str, num_samples: int | None = None) -> None:
    """ShardError unless `record` (the parsed complete.json at `where`, None if absent) lists `split`
    with `num_samples` samples (when given)."""
    hint = "the build that wrote it did not finish: run the shards stage again"
    if record is None:
        raise ShardError(f"{where} is missing: {hint}")
    if not isinstance(record, dict) or not isinstance(record.get("splits"), dict):
        raise ShardError(f"{where} is not a completion record: {hint}")
    entry = record["splits"].get(split)
    if not isinstance(entry, dict):
        raise ShardError(f"{where} does not list split {split!r}: {hint}")
    if num_samples is not None and entry.get("num_samples") != num_samples:
        raise ShardError(
            f"{where} says split {split!r} has {entry.get('num_samples')} samples, its manifest "
            f"{num_samples}: the split comes from another build; run the shards stage again"
        )
