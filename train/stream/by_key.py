"""Samples read by key, and the evaluation episodes built on them.

Evaluation reads each sample with one ranged read: index.tsv gives the shard and the byte offset of
the sample's first tar header; the read ends at the next indexed sample of that shard (or the end of
the shard). The reads of one DataLoader batch go out together on a bounded thread pool
(`EvalEpisodes.__getitems__`, `shard_io.read_ranges`), so a remote store costs about one round trip
per batch, not one per sample. This works the same for local files, `file://`, HTTP `Range` and s3
(fsspec `cat_file`), needs no extra index file beside index.tsv (unlike `wids`, which would need its
own JSON shard list), and keeps shards as plain WebDataset tars. A missing, short or corrupt read
raises ShardError naming the shard: a test set never shrinks. Training manifests
(train.stream.manifest_stream) read their samples the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.protocol import protocol_rules, void_as_background
from pipeline.shard_format import IGNORE_INDEX, check_shard_name, sample_image_problem
from train.stream.draw import eval_flips
from train.stream.index import read_index
from train.stream.shard_io import (
    DEFAULT_REMOTE,
    RemoteReads,
    ShardError,
    join_url,
    parse_tar_fragment,
    read_ranges,
    read_text,
)
from train.stream.transforms import (
    EVAL_RESIZES,
    binary_mask,
    decode_image,
    decode_label,
    episode_label,
    letterbox_pair,
    letterbox_size,
    resize_pair,
)


# -- evaluation episodes -----------------------------------------------------------------------
class SampleReader:
    """Fetch samples of a split by image id, one ranged read each, never skipping a bad shard."""

    def __init__(self, split_url: str, remote: RemoteReads = DEFAULT_REMOTE) -> None:
        self.split_url, self.remote = split_url, remote
        self.image_classes, self.locations = read_index(split_url)
        manifest_url = join_url(self.split_url, "manifest.json")
        shards = json.loads(read_text(manifest_url))["shards"]
        self.shard_bytes = {check_shard_name(s["name"], manifest_url): int(s["bytes"]) for s in shards}
        # (bytes, sha256) by URL: what a shard fetched whole (a server that ignores Range) must be
        self.shard_info = {
            join_url(split_url, name): (size, s.get("sha256"))
            for (name, size), s in zip(self.shard_bytes.items(), shards, strict=True)
        }

    def fetch(self, key: str) -> dict[str, Any]:
        return self.fetch_many([key])[key]

    def fetch_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Samples by key, their ranged reads in flight together (`shard_io.read_ranges`)."""
        unique = list(dict.fromkeys(keys))
        ranges = [self._range(key) for key in unique]
        return {
            key: self._sample(key, url, start, end, data)
            for key, (url, start, end), data in zip(
                unique, ranges, read_ranges(ranges, self.remote, self.shard_info), strict=True
            )
        }

    def _range(self, key: str) -> tuple[str, int, int | None]:
        loc = self.locations.get(key)
        if loc is None:  # a ShardError (one line), never a KeyError traceback
            raise ShardError(f"{key} is not in {self.split_url}/index.tsv")
        end = loc.end if loc.end is not None else self.shard_bytes.get(loc.shard)
        return join_url(self.split_url, loc.shard), loc.start, end

    @staticmethod
    def _sample(key: str, url: str, start: int, end: int | None, data: bytes | Exception) -> dict[str, Any]:
        if isinstance(data, OSError):
            raise ShardError(f"shard {url}: cannot read sample {key}: {data}") from data
        if isinstance(data, Exception):
            raise data
        if end is not None and len(data) != end - start:
            raise ShardError(
                f"shard {url} is truncated: sample {key} needs bytes {start}..{end}, got {len(data)}"
            )
        sample = parse_tar_fragment(data, key, url)
        for ext in ("jpg", "label.png"):
            if ext not in sample:
                raise ShardError(f"shard {url}: sample {key} has no .{ext} member")
        # every ranged read (evaluation, training manifests): a decompression bomb is never decoded
        problem = sample_image_problem(sample)
        if problem:
            raise ShardError(f"shard {url}: sample {key}: {problem}")
        return sample


def eval_query_label(label: np.ndarray, class_ids: Sequence[int], protocol: str) -> np.ndarray:
    """Query label for scoring: 0 bg, k+1 for way k; denet counts void (255) as background."""
    out = episode_label(label, class_ids)
    return void_as_background(out) if protocol_rules(protocol).eval_void_background else out


def eval_support_mask(
    label: np.ndarray, class_id: int, protocol: str, episode_classes: Sequence[int] = ()
) -> np.ndarray:
    """Support mask for evaluation: 1 fg, 0 bg. Under denet every other pixel is background, void (255)
    and the episode's other classes included (the release's test masks are `mask == class` and hold no
    255, voc_sbd.py:207-209); under standard void and the episode's other classes stay 255
    (`transforms.binary_mask`, PANet's N-way rule)."""
    mask = binary_mask(label, class_id, episode_classes)
    return void_as_background(mask) if protocol_rules(protocol).eval_void_background else mask


class EvalEpisodes(Dataset):
    """The manifest's episodes, fetched by key from the test shards; use `collate_eval`.

    Label handling (notes, "Two presets"): images and support masks are resized to `image_size`.
    denet: query labels resized (nearest) to `image_size`, void counted as background.
    standard: query labels at the original size, void kept as 255 (ignored); `collate_eval` pads
    them to the batch's largest size with 255 and `query_size` gives each (h, w) to crop to.
    `query_full_label` holds the raw dataset ids (novel classes kept) at the query label's size.
    `resize`: square (squash to `image_size`, DENet's and HSNet's tests) | letterbox (PFENet's test:
    `letterbox_pair`, labels at image size padded with 255; original-size labels stay as they are and
    `run_episodes` maps the prediction back as the release does).
    `flip`: mirror images with their labels as `eval_flips` says (the denet protocol); `first` is the
    position of this manifest's first episode in the full manifest (a torchrun rank's slice), so that
    every episode keeps its flips however the episodes are split.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        split_url: str,
        image_size: int,
        protocol: str,
        reduced: bool = True,
        flip: bool = False,
        first: int = 0,
        remote: RemoteReads = DEFAULT_REMOTE,
        resize: str = "square",
    ) -> None:
        if resize not in EVAL_RESIZES:
            raise ValueError(f"evaluate.resize = {resize!r}: use one of {', '.join(EVAL_RESIZES)}")
        self.resize = resize
        self.episodes = manifest["episodes"]
        self.way, self.shot = manifest["way"], manifest["shot"]
        self.reader = SampleReader(split_url, remote)
        self.image_size, self.protocol, self.reduced = image_size, protocol, reduced
        self.rules = protocol_rules(protocol)
        per_episode = self.way * self.shot + 1
        self.flips = (
            eval_flips(first + len(self.episodes), per_episode)[first:]
            if flip
            else np.zeros((len(self.episodes), per_episode), dtype=bool)
        )

    def __len__(self) -> int:
        return len(self.episodes)

    def _load(
        self, sample: dict[str, Any], keep_label_size: bool, flip: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(image, label, padding): padding is True where `letterbox_pair` padded a label at the image
        size (None without letterbox or at the original size), flipped with the image."""
        img = decode_image(sample["jpg"], self.image_size, self.reduced)
        label = decode_label(sample["label.png"])
        padding = None
        if self.resize == "letterbox":
            img, small = letterbox_pair(img, label, self.image_size)
            if not keep_label_size:
                h, w = letterbox_size(label.height, label.width, self.image_size)
                padding = np.ones((self.image_size, self.image_size), dtype=bool)
                padding[:h, :w] = False
        else:
            img, small = resize_pair(img, label, self.image_size)
        assert small is not None
        label = label if keep_label_size else small
        if flip:  # image and label together, like the release's RandomHorizontallyFlip
            img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
            padding = padding[:, ::-1] if padding is not None else None
        return np.asarray(img, dtype=np.uint8), np.asarray(label, dtype=np.uint8), padding

    def _keys(self, i: int) -> list[str]:
        ep = self.episodes[i]
        return [ep["query"], *(k for keys in ep["supports"] for k in keys)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._episode(i, self.reader.fetch_many(self._keys(i)))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A DataLoader batch: the reads of all its episodes go out together (one round trip, not 2 x B)."""
        samples = self.reader.fetch_many([k for i in indices for k in self._keys(i)])
        return [self._episode(i, samples) for i in indices]

    def _episode(self, i: int, samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ep = self.episodes[i]
        flips = iter(self.flips[i])  # supports (way-major) first, then the query, as the release draws them
        s_imgs, s_masks = [], []
        for c, keys in zip(ep["classes"], ep["supports"], strict=True):
            for k in keys:
                si, sl, _ = self._load(samples[k], keep_label_size=False, flip=bool(next(flips)))
                s_imgs.append(si)
                s_masks.append(eval_support_mask(sl, c, self.protocol, ep["classes"]))
        img, label, padding = self._load(
            samples[ep["query"]], keep_label_size=not self.rules.eval_at_image_size, flip=bool(next(flips))
        )
        query_label = eval_query_label(label, ep["classes"], self.protocol)
        if padding is not None:  # letterbox padding is not scored, also where void counts as background
            query_label = np.where(padding, IGNORE_INDEX, query_label).astype(np.uint8)
        return {
            "query_img": img,
            "query_label": query_label,
            "query_full_label": label,
            "support_imgs": np.stack(s_imgs),
            "support_masks": np.stack(s_masks),
            "class_ids": list(ep["classes"]),
            "query_id": ep["query"],
            "support_ids": ep["supports"],
            "letterbox": self.resize == "letterbox",
        }


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch eval episodes; labels of different sizes are padded with 255, `query_size` keeps (h, w)."""
    b = len(items)
    way = len(items[0]["class_ids"])
    shot = len(items[0]["support_ids"][0])
    s = items[0]["query_img"].shape[0]
    hmax = max(it["query_label"].shape[0] for it in items)
    wmax = max(it["query_label"].shape[1] for it in items)
    labels = np.full((b, hmax, wmax), IGNORE_INDEX, dtype=np.uint8)
    full = np.full((b, hmax, wmax), IGNORE_INDEX, dtype=np.uint8)
    for j, it in enumerate(items):
        h, w = it["query_label"].shape
        labels[j, :h, :w] = it["query_label"]
        full[j, :h, :w] = it["query_full_label"]
    q = np.stack([it["query_img"] for it in items]).transpose(0, 3, 1, 2)
    sup = np.stack([it["support_imgs"] for it in items]).reshape(b, way, shot, s, s, 3)
    masks = np.stack([it["support_masks"] for it in items]).reshape(b, way, shot, s, s)
    return {
        "query_img": torch.from_numpy(np.ascontiguousarray(q)),
        "query_label": torch.from_numpy(labels),
        "query_full_label": torch.from_numpy(full),
        "query_size": torch.tensor([it["query_label"].shape for it in items], dtype=torch.int64),
        "letterbox": torch.tensor([bool(it.get("letterbox")) for it in items]),
        "support_imgs": torch.from_numpy(np.ascontiguousarray(sup.transpose(0, 1, 2, 5, 3, 4))),
        "support_masks": torch.from_numpy(np.ascontiguousarray(masks)),
        "class_ids": torch.tensor([it["class_ids"] for it in items], dtype=torch.int64),
        "query_id": [it["query_id"] for it in items],
        "support_ids": [it["support_ids"] for it in items],
    }
