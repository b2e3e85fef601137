"""Shards stage: raw files -> deterministic WebDataset tars, per-class mask index and manifest per split.

Formats: docs/design.md ("Shards"). A build writes into a temp folder beside its output and renames
it into place once every split, the report and (last) the dataset's `complete.json` are written: a
build that stops publishes nothing, and a reader refuses a dataset without its completion record.
Temp leftovers of a killed build are removed by the next run. Output order depends only on the
inputs: images are labelled by a process pool and taken back in submission order, so the worker
count never changes a byte.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import tarfile
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from pipeline.cli import run_stage
from pipeline.config import NUM_CLASSES, Params, load_params
from pipeline.io import atomic_write, remove_stale_temps, replace_dir, temp_dir, write_json
from pipeline.masks import SPLITS, DataError, Labeled, Sample, coco_samples, pascal_samples, process_or_error
from pipeline.pool_workers import exit_with_parent
from pipeline.raw import certified_raw
from pipeline.shard_format import (
    COMPLETE,
    INDEX_COLUMNS,
    INDEX_TEXT_COLUMNS,
    check_member,
    completion_record,
    index_rows,
    member_limit,
)

_WINDOW = 256  # images in flight in the pool
_CHUNK = 4  # images per pool task
REPORT = "report.json"


@dataclass
class SplitResult:
    """What one split's writer produced."""

    num_samples: int
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_shards(num_samples: int, max_samples: int, min_shards: int) -> list[int]:
    """Samples per shard: at least `min_shards` shards (never more than samples), none over `max_samples`.

    Sizes differ by at most one, so ranks x workers get near-equal work.
    """
    if num_samples == 0:
        return []
    count = min(num_samples, max(min_shards, math.ceil(num_samples / max_samples)))
    return [(i + 1) * num_samples // count - i * num_samples // count for i in range(count)]


class HashingFile:
    """A binary file handle that hashes and counts what is written through it: the manifest's sha256
    and size come from the writing pass itself, not from reading the shard back."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.size


class ShardTarWriter:
    """Samples into one WebDataset tar, as webdataset's `TarWriter(handle, encoder=False, user="",
    group="", mode=0o644, mtime=0)` writes them, byte for byte: a member `<key>.<ext>` per entry in
    sorted order, headers that depend on name and size only, so identical input gives identical shards.

    Not webdataset's own class: importing webdataset imports torch (+0.7 GB RSS and 1.3 CPU-s in
    every data stage, docs/performance.md), and its writer is this much `tarfile`.
    """

    def __init__(self, handle: BinaryIO) -> None:
        # closed by close() / __exit__; `.offset` is where the next sample's first header goes
        self.tarstream = tarfile.open(fileobj=handle, mode="w|")  # noqa: SIM115

    def write(self, sample: dict[str, Any]) -> None:
        """Write `sample`'s entries (bytes; names starting with "_" are metadata and skipped)."""
        key = sample["__key__"]
        for ext in sorted(sample):
            if ext.startswith("_"):
                continue
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(sample[ext]), 0, 0o644, "", ""
            self.tarstream.addfile(info, io.BytesIO(sample[ext]))

    def close(self) -> None:
        self.tarstream.close()

    def __enter__(self) -> ShardTarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_writer(handle: BinaryIO) -> ShardTarWriter:
    """The shard writer over an open binary handle (`ShardTarWriter`)."""
    return ShardTarWriter(handle)


def sample_members(rec: Labeled) -> dict[str, Any]:
    """The sample as TarWriter writes it (members in sorted name order: `.jpg`, `.json`, `.label.png`)."""
    meta = json.dumps(rec.meta(), sort_keys=True, separators=(",", ":")).encode()
    return {"__key__": rec.key, "jpg": rec.jpeg, "json": meta, "label.png": rec.png}


def _label_chunk(args: list[tuple[Sample, int, int | None, str]]) -> list[Labeled | tuple[Sample, str]]:
    """Pool task: labelled samples without their JPEG bytes, which the writer reads itself
    (`_with_jpeg`): sending an image back through the pool's pipe costs more CPU than reading it."""
    out = []
    for a in args:
        rec = process_or_error(a)
        if isinstance(rec, Labeled):
            rec.jpeg = b""
        out.append(rec)
    return out


def _with_jpeg(rec: Labeled | tuple[Sample, str], sample: Sample) -> Labeled | tuple[Sample, str]:
    """`rec` with its JPEG bytes read back from `sample.image`; the bytes must be those the worker checked."""
    if isinstance(rec, tuple) or rec.jpeg:
        return rec
    try:
        data = Path(sample.image).read_bytes()
    except OSError as exc:
        return sample, f"{sample.image}: image file became unreadable while the shards were written ({exc})"
    if zlib.crc32(data) != rec.jpeg_crc32:
        return sample, f"{sample.image}: image file changed while the shards were written"
    rec.jpeg = data
    return rec


@contextlib.contextmanager
def _naming_the_file(path: Path) -> Iterator[None]:
    """An OSError of a write without a file name (`[Errno 27] File too large`) names `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, f"{path}: {exc.strerror or exc}") from exc
        raise


@contextlib.contextmanager
def labelling_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool for labelling (None for one worker) that always shuts down the same way.

    Whatever stops the build (a bad file, a full disk, Ctrl-C), queued tasks are cancelled and the
    few running ones finish before the workers exit and are reaped: no terminate() racing the
    workers for the pool's locks (`multiprocessing.Pool` torn down mid-`imap` can deadlock there),
    and a worker that dies (e.g. killed for memory) is an error, not an endless wait.
    """
    if workers <= 1:
        yield None
        return
    context = get_context("spawn" if sys.platform == "darwin" else "fork")
    # Forked workers share the parent's memory until either side writes to a page. The samples
    # (all of COCO's annotations) are old objects: frozen, no garbage collection in a worker walks
    # them, which would write to every object's header and copy ~all of it into each worker.
    gc.freeze()
    # workers exit when this process dies without cleanup (SIGKILL, the OOM killer): pipeline.pool_workers
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()


def _labelled(
    samples: list[Sample], num_classes: int, pool: Executor | None, presence_size: int | None, coco_crowd: str
) -> Iterator[Labeled | tuple[Sample, str]]:
    """Labelled samples in input order; in `pool` when given.

    Tasks are submitted in a sliding window, so at most `_WINDOW` labelled images are ever held,
    whatever the dataset size; the pool's owner shuts it down (`labelling_pool`), never this generator.
    """
    if pool is None:
        yield from (process_or_error((s, num_classes, presence_size, coco_crowd)) for s in samples)
        return
    # tasks are made as they are submitted: no per-sample object outlives its window
    chunks = (
        [(s, num_classes, presence_size, coco_crowd) for s in samples[i : i + _CHUNK]]
        for i in range(0, len(samples), _CHUNK)
    )

    def submit(chunk: list[tuple[Sample, int, int | None, str]]) -> tuple[Any, list[Sample]]:
        return pool.submit(_label_chunk, chunk), [a[0] for a in chunk]

    pending = deque(submit(c) for c in itertools.islice(chunks, max(1, _WINDOW // _CHUNK)))
    while pending:
        future, chunk_samples = pending.popleft()
        done = future.result()
        following = next(chunks, None)
        if following is not None:
            pending.append(submit(following))
        yield from map(_with_jpeg, done, chunk_samples)


def write_split(
    samples: list[Sample],
    out_dir: str | Path,
    *,
    dataset: str,
    protocol: str,
    split: str,
    max_samples: int,
    min_shards: int,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    presence_size: int | None = None,
    coco_crowd: str = "ignore",
) -> SplitResult:
    """Write `<split>-NNNNNN.tar` shards, `index.tsv` and (last) `manifest.json` into `out_dir`.

    `presence_size`: the index's presence columns count class pixels of the label resized to that
    square size (None: the original size); `coco_crowd`: masks.coco_label's crowd rule."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # the split stops looking complete from here on
    plan = plan_shards(len(samples), max_samples, min_shards)
    names = [f"{split}-{i:06d}.tar" for i in range(len(plan))]
    for stale in out_dir.glob(f"{split}-*.tar"):
        if stale.name not in names:
            stale.unlink()
    num_classes = NUM_CLASSES[dataset]
    bar = tqdm(total=len(samples), desc=f"{dataset}/{split}", unit="img", disable=not progress)
    shards: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    total = 0
    with (
        labelling_pool(workers) as pool,
        contextlib.closing(_labelled(samples, num_classes, pool, presence_size, coco_crowd)) as results,
        atomic_write(out_dir / "index.tsv", "w") as index,
        bar,
    ):
        index.write("\t".join(INDEX_COLUMNS) + "\n")
        for name, size in zip(names, plan, strict=True):
            counts: Counter[int] = Counter()
            written = 0
            with (
                _naming_the_file(out_dir / name),
                atomic_write(out_dir / name, "wb") as handle,
                shard_writer(hashing := HashingFile(handle)) as writer,  # type: ignore[arg-type]
            ):
                for _ in range(size):
                    rec = next(results)
                    bar.update(1)
                    if isinstance(rec, tuple):
                        sample, problem = rec
                        if not skip_bad:
                            raise DataError(problem)
                        skipped.append({"split": split, "id": sample.key, "problem": problem})
                        continue
                    offset = writer.tarstream.offset  # the sample's first header: index.tsv's offset
                    writer.write(sample_members(rec))
                    _write_index_rows(index, rec, name, offset)
                    counts.update(rec.areas.keys())
                    written += 1
            shards.append(
                {
                    "name": name,
                    "num_samples": written,
                    "sha256": hashing.sha256.hexdigest(),
                    "bytes": hashing.size,
                    "class_counts": {str(c): n for c, n in sorted(counts.items())},
                }
            )
            total += written
    manifest = {
        "dataset": dataset,
        "split": split,
        "protocol": protocol,
        "presence_size": presence_size,
        "num_samples": total,
        "shards": shards,
    }
    write_json(manifest_path, manifest)
    return SplitResult(total, shards, skipped)


def _write_index_rows(index: Any, rec: Labeled, shard: str, offset: int) -> None:
    pixels = rec.height * rec.width
    for cid, area in sorted(rec.areas.items()):
        x0, y0, x1, y1 = rec.bboxes[cid]
        row = (
            rec.key,
            rec.split,
            cid,
            area,
            f"{area / pixels:.6f}",
            rec.presence_areas[cid],
            rec.presence_total,
        )
        row += (x0, y0, x1, y1, rec.ignore_px, rec.height, rec.width, shard, offset)
        index.write("\t".join(map(str, row)) + "\n")


def dataset_samples(
    dataset: str,
    raw: str | Path,
    protocol: str,
    skip_bad: bool,
    bad: list[dict[str, str]],
    pascal_masks: str = "voc",
) -> dict[str, list[Sample]]:
    """Samples per split for `dataset` (image sets by `protocol`, docs/protocol.md)."""
    if dataset == "pascal":
        return pascal_samples(raw, protocol, pascal_masks)
    if dataset == "coco":
        return coco_samples(raw, skip_bad, bad)
    raise ValueError(f"dataset {dataset!r} is not pascal | coco")


def build_shards(
    raw: str | Path, out: str | Path, params: Params, workers: int | None = None, progress: bool = True
) -> dict[str, SplitResult]:
    """All splits of `params.dataset` under `params.protocol` into `out/<split>/`; report.json if skipping.

    Everything is written into a temp folder beside `out`, which replaces `out` by rename once the
    dataset's `complete.json` is written (last): a failed build publishes nothing and leaves a
    previous `out` as it was. A folder of the user's is never replaced (`check_replaceable`).
    """
    out = Path(out)
    data = params.data
    remove_stale_temps(out.parent)  # what a killed build left beside `out`
    check_replaceable(out)
    bad: list[dict[str, str]] = []
    per_split = dataset_samples(params.dataset, raw, params.protocol, data.skip_bad, bad, data.pascal_masks)
    work = temp_dir(out.parent, out.name)
    try:
        results = {}
        for split in SPLITS:
            results[split] = write_split(
                per_split[split],
                work / split,
                dataset=params.dataset,
                protocol=params.protocol,
                split=split,
                max_samples=int(data.shard_max_samples),
                min_shards=int(data.min_shards),
                workers=data.workers if workers is None else workers,
                skip_bad=data.skip_bad,
                progress=progress,
                presence_size=None if data.presence_size is None else int(data.presence_size),
                coco_crowd=data.coco_crowd,
            )
            bad += results[split].skipped
        if data.skip_bad:
            write_json(work / REPORT, {"count": len(bad), "skipped": bad})
        counts = {split: r.num_samples for split, r in results.items()}
        write_json(work / COMPLETE, completion_record(params.dataset, params.protocol, counts))
        replace_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def check_replaceable(out: Path) -> None:
    """FileExistsError unless `out` is absent, empty or a shards folder as this stage writes it.

    Pointing `--out` at a folder of one's own must never delete it.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder: choose another --out")
    ours = {*SPLITS, REPORT, COMPLETE}
    split_files = ("manifest.json", "index.tsv")
    foreign = [p.name for p in out.iterdir() if p.name not in ours]
    for split in SPLITS:
        if (out / split).is_dir():
            foreign += [
                f"{split}/{p.name}"
                for p in (out / split).iterdir()
                if p.name not in split_files
                and not (p.name.startswith(f"{split}-") and p.suffix == ".tar")
                and not (p.name.startswith(".") and p.suffix == ".tmp")  # an older build's temp file
            ]
    if foreign:
        raise FileExistsError(
            f"{out} holds files the shards stage did not write ({', '.join(sorted(foreign)[:3])}): "
            "move them away or choose another --out; nothing was changed"
        )


# ---------------------------------------------------------------- the index, for users and the sampler


def load_index(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of an `index.tsv` as numpy arrays (ints, float fraction, str ids)."""
    with open(path) as handle:
        rows = [row for _, row in index_rows(handle, str(path))]
    out: dict[str, np.ndarray] = {}
    for name in INDEX_COLUMNS:
        values = [row[name] for row in rows]
        if name == "fraction":
            out[name] = np.array(values, dtype=np.float64)
        elif name in INDEX_TEXT_COLUMNS:
            out[name] = np.array(values, dtype=str)
        else:
            out[name] = np.array(values, dtype=np.int64)
    return out


def is_present(area: Any, total: Any, min_fraction: float = 0.0, min_pixels: int = 0) -> Any:
    """The presence rule of the presets on the presence columns: pixels >= min_pixels and
    pixels / total >= min_fraction (a float division, like the DENet release's `c / total >= threshold`)."""
    area, total = np.asarray(area), np.asarray(total)
    return (area >= min_pixels) & (area / total >= min_fraction)


def query_index(
    index: dict[str, np.ndarray],
    class_id: int | None = None,
    min_fraction: float = 0.0,
    min_pixels: int = 0,
) -> np.ndarray:
    """Row numbers matching a class and the presence rule (presence columns), e.g. images of class 7
    covering >= 2%: `rows = query_index(load_index(p), 7, min_fraction=0.02); index["image_id"][rows]`."""
    keep = is_present(index["presence_px"], index["presence_total"], min_fraction, min_pixels)
    if class_id is not None:
        keep &= index["class_id"] == class_id
    return np.flatnonzero(keep)


def read_shard_with_offsets(
    path: str | Path, limit: int | None = None
) -> Iterable[tuple[str, int, dict[str, bytes]]]:
    """(key, offset, {ext: bytes}) per sample of a shard, in file order; used by verify and tests.

    Python's `tarfile` in random-access mode, not training's webdataset stages: verify checks what the
    writer wrote (and the offsets `index.tsv` holds) apart from the path training uses.
    Every member header passes `check_member` (no sparse member, at most `limit` bytes, default the
    file's size capped by MAX_MEMBER_BYTES) before its data is read; a failing one raises ShardError.
    """
    limit = member_limit(Path(path).stat().st_size) if limit is None else limit
    with tarfile.open(path, "r") as tar:
        key, offset, members = None, 0, {}
        for info in tar:
            check_member(str(path), info.name, info.size, sparse=info.issparse(), limit=limit)
            base, _, ext = info.name.partition(".")
            if base != key:
                if key is not None:
                    yield key, offset, members
                key, offset, members = base, info.offset, {}
            handle = tar.extractfile(info)
            members[ext] = handle.read() if handle else b""
        if key is not None:
            yield key, offset, members


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.shards --raw DIR --out DIR`; dataset, protocol and data.* from params.yaml."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True, help="folder with the extracted official layouts")
    ap.add_argument("--out", required=True, help="output folder; gets <split>/ subfolders")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workers", type=int, default=None, help="override data.workers")
    args = ap.parse_args(argv)

    def work() -> int:
        params = load_params(args.params)
        build_shards(certified_raw(args.raw, params.dataset), args.out, params, args.workers)
        return 0

    return run_stage("shards", work)


if __name__ == "__main__":
    sys.exit(main())
