"""Loader benchmark: episodes/s of the shard sampler vs a per-file loader, over local disk and slow HTTP.

`python -m train.bench.bench_loader [--shards DIR --raw DIR --folds DIR]`: without arguments it writes a
synthetic dataset in the design.md formats (VOCdevkit files, shards, index.tsv, fold lists) to a
temp folder; pass the toy data's folders to measure those. Prints one table; a script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pipeline.folds import training_label, write_folds
from pipeline.io import write_json
from pipeline.masks import Sample
from pipeline.shard_format import COMPLETE, completion_record
from pipeline.shards import write_split
from train.stream.index import read_fold, read_pairs
from train.stream.sampler import EpisodeStream, collate_train, worker_split
from train.stream.shard_io import join_url, read_range, read_text
from train.stream.transforms import (
    binary_mask,
    decode_batch_images,
    decode_jpegs_torch,
    episode_label,
    load_pair,
)

VOC = "VOCdevkit/VOC2012"


# -- synthetic data in the design.md formats (also the test fixture) --------------------------
def _synthetic_image(
    rng: np.random.Generator, w: int, h: int, num_classes: int
) -> tuple[Image.Image, np.ndarray]:
    label = np.zeros((h, w), np.uint8)
    img = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.kron(img, np.ones((8, 8, 1), np.uint8))[:h, :w].copy()
    for _ in range(int(rng.integers(1, 3))):
        c = int(rng.integers(1, num_classes + 1))
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = x0 + int(rng.integers(w // 4, w // 2)), y0 + int(rng.integers(h // 4, h // 2))
        label[y0:y1, x0:x1] = c
        img[y0:y1, x0:x1] = (c * 37 % 255, c * 91 % 255, c * 53 % 255)
        label[y0:y1, x0] = 255  # a void band on one edge, like VOC's borders
    return Image.fromarray(img), label


def write_synthetic(
    root: str | Path,
    n_train: int = 120,
    n_test: int = 60,
    size: tuple[int, int] = (200, 160),
    shard_max: int = 20,
    protocol: str = "denet",
    seed: int = 0,
) -> dict[str, Path]:
    """PASCAL-like data under `root`: VOCdevkit files, then `shards/{train,test}` and `folds` (all 4
    folds) written by the stages' own writers (`pipeline.shards.write_split`, `pipeline.folds.write_folds`),
    presence at the original size and any pixel counting."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    jpg_dir, png_dir = root / VOC / "JPEGImages", root / VOC / "SegmentationClass"
    jpg_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    shards = root / "shards"
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        samples = []
        for i in range(n):
            key = f"{2000 + (split == 'test')}_{i:06d}"
            img, label = _synthetic_image(rng, *size, 20)
            img.save(jpg_dir / f"{key}.jpg", "JPEG", quality=90)
            Image.fromarray(label, "L").save(png_dir / f"{key}.png", "PNG")
            samples.append(
                Sample(key, split, str(jpg_dir / f"{key}.jpg"), str(png_dir / f"{key}.png"), "png")
            )
        result = write_split(
            samples, shards / split, dataset="pascal", protocol=protocol, split=split, max_samples=shard_max,
            min_shards=1, workers=1, progress=False,
        )  # fmt: skip
        counts[split] = result.num_samples
    write_json(shards / COMPLETE, completion_record("pascal", protocol, counts))
    write_folds(shards, root / "folds", dataset="pascal", protocol=protocol)
    return {"root": root, "shards": shards, "folds": root / "folds", "raw": root}


# -- per-file loader in the style of HSNet/PFENet ----------------------------------------------
class PerFileEpisodes(Dataset):
    """Random (image, class) pair per episode, PIL-open JPEG and PNG from the VOCdevkit folder."""

    def __init__(
        self,
        raw: str,
        pairs: dict[str, list[int]],
        novel: list[int],
        way: int,
        shot: int,
        size: int,
        seed: int,
        reduced: bool = True,
        length: int = 10**6,
    ) -> None:
        self.raw, self.novel, self.way, self.shot, self.size, self.seed = raw, novel, way, shot, size, seed
        self.reduced, self.length = reduced, length
        self.pairs = [(k, c) for k, cs in sorted(pairs.items()) for c in cs]
        self.by_class: dict[int, list[str]] = {}
        for k, c in self.pairs:
            self.by_class.setdefault(c, []).append(k)

    def __len__(self) -> int:
        return self.length

    def _read(self, path: str) -> bytes:
        return read_range(join_url(self.raw, path), 0, None)

    def _load(self, key: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        jpg, png = self._read(f"{VOC}/JPEGImages/{key}.jpg"), self._read(f"{VOC}/SegmentationClass/{key}.png")
        return load_pair(jpg, png, self.size, bool(rng.random() < 0.5), self.reduced)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i])
        query, c0 = self.pairs[int(rng.integers(len(self.pairs)))]
        others = [c for c in self.by_class if c != c0]
        classes = [c0] + [others[int(j)] for j in rng.choice(len(others), self.way - 1, replace=False)]
        img, label = self._load(query, rng)
        full = training_label(label, self.novel, "denet")
        s_imgs, s_masks, s_ids = [], [], []
        for c in classes:
            pool = [k for k in self.by_class[c] if k != query]
            ids = [pool[int(j)] for j in rng.choice(len(pool), self.shot, replace=False)]
            s_ids.append(ids)
            for k in ids:
                si, sl = self._load(k, rng)
                s_imgs.append(si)
                s_masks.append(binary_mask(sl, c, classes))
        return {
            "query_img": img,
            "query_label": episode_label(full, classes),
            "query_full_label": full,
            "support_imgs": np.stack(s_imgs),
            "support_masks": np.stack(s_masks),
            "class_ids": classes,
            "query_id": query,
            "support_ids": s_ids,
        }


# -- decode ceiling: the same decode + resize on bytes already in memory ------------------------
class DecodeCeiling(IterableDataset):
    """Batches built from in-memory samples: only decoding, resizing and stacking cost time."""

    def __init__(
        self,
        samples: list[tuple[bytes, bytes]],
        way: int,
        shot: int,
        size: int,
        batch: int,
        batches: int,
        reduced: bool,
    ) -> None:
        self.samples, self.way, self.shot, self.size = samples, way, shot, size
        self.batch, self.batches, self.reduced = batch, batches, reduced

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = worker_split()
        n = self.way * self.shot + 1
        rng = np.random.default_rng(worker)
        for _ in range(self.batches // workers):
            items = []
            for _ in range(self.batch):
                pairs = [
                    load_pair(*self.samples[int(j)], self.size, False, self.reduced)
                    for j in rng.integers(len(self.samples), size=n)
                ]
                items.append(
                    {
                        "query_img": pairs[0][0],
                        "query_label": pairs[0][1],
                        "query_full_label": pairs[0][1],
                        "support_imgs": np.stack([p[0] for p in pairs[1:]]),
                        "support_masks": np.stack([p[1] for p in pairs[1:]]),
                        "class_ids": [1] * self.way,
                        "query_id": "",
                        "support_ids": [],
                    }
                )
            yield collate_train(items, self.way, self.shot)


# -- HTTP server with a fixed per-request latency --------------------------------------------
class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    latency_s = 0.02

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        time.sleep(self.latency_s)
        return super().send_head()


def _serve(root: str, latency_s: float, port_out: Any) -> None:
    handler = type("Handler", (_SlowHandler,), {"latency_s": latency_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    server.daemon_threads = True
    port_out.send(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def slow_http_server(root: str | Path, latency_s: float) -> Iterator[str]:
    """Serve `root` at http://127.0.0.1:<port> with `latency_s` added to every request.

    The server runs in its own process, like remote storage: it never takes the GIL of the loader.
    """
    with served_by_process(_serve, str(root), latency_s) as port:
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def served_by_process(target: Any, *args: Any) -> Iterator[Any]:
    """Run `target(*args, conn)` in a forked process; yields what it sends on `conn` (its address)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    try:
        yield parent.recv()
    finally:
        proc.terminate()
        proc.join()


# -- measurement ---------------------------------------------------------------------------------
def episodes_per_s(loader: Any, seconds: float, batch_size: int, warmup: int = 3) -> float:
    """Steady-state rate over `seconds`: the clock starts after `warmup` batches (worker start-up)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    rate = n * batch_size / (time.perf_counter() - t0)
    del it
    return rate


class _DecodeOn:
    """Iterate a `gpu_decode` loader and decode each batch's images on `device`, as `normalize` does."""

    def __init__(self, loader: DataLoader, device: str) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            out = decode_batch_images(batch, self.device)
            if self.device == "cuda":
                torch.cuda.synchronize()
            yield out


def _stream(shards: str, folds: str, args: argparse.Namespace, gpu_decode: bool = False) -> EpisodeStream:
    base, novel = read_fold(folds, args.fold)
    pairs = read_pairs(read_text(join_url(folds, f"fold{args.fold}/train.txt")))
    return EpisodeStream(
        shards,
        pairs,
        base,
        novel,
        way=args.way,
        shot=args.shot,
        batch_size=args.batch,
        image_size=args.size,
        pool_size=args.pool,
        seed=0,
        reduced=args.reduced,
        episodes_per_epoch=10**9,
        resampled=True,
        gpu_decode=gpu_decode,
    )


def _loader(ds: Any, workers: int, batch: int | None) -> DataLoader:
    kw: dict[str, Any] = {"num_workers": workers, "persistent_workers": False}
    if workers:
        kw["prefetch_factor"] = 4
    if batch is None:
        return DataLoader(ds, batch_size=None, **kw)
    return DataLoader(
        ds, batch_size=batch, collate_fn=lambda items: collate_train(items, ds.way, ds.shot), **kw
    )


def _litdata_loader(shards_dir: Path, folds: str, args: argparse.Namespace, tmp: Path) -> Any:
    """A factory of loaders running the same pool sampler fed by litdata (`optimize` + `StreamingDataset`)."""
    import litdata

    from train.stream.shard_io import read_shard, shard_urls

    out = tmp / "litdata"
    samples = [s for url, _ in shard_urls(str(shards_dir / "train")) for s in read_shard(url)]
    inputs = [(s["__key__"], s["jpg"], s["label.png"]) for s in samples]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        litdata.optimize(
            fn=_lit_item,
            inputs=inputs,
            output_dir=str(out),
            chunk_bytes="4MB",
            num_workers=1,
            mode="overwrite",
        )
    # litdata switches the start method to spawn; the other loaders here are measured with fork
    multiprocessing.set_start_method("fork", force=True)
    base = _stream(str(shards_dir / "train"), folds, args)

    def make() -> DataLoader:
        lit = LitdataEpisodes(
            [str(out)], base.image_classes, base.base, base.novel, way=args.way, shot=args.shot,
            batch_size=args.batch, image_size=args.size, pool_size=args.pool, reduced=args.reduced,
            episodes_per_epoch=10**9, resampled=True,
        )  # fmt: skip
        return _loader(lit, args.workers, None)

    return make


class LitdataEpisodes(EpisodeStream):
    """The same pools and episodes, samples read by litdata's StreamingDataset from `urls[0]`."""

    def samples(self, urls: Iterator[str]) -> Iterator[dict[str, Any]]:
        import litdata

        while True:  # litdata splits its chunks over the DataLoader workers itself
            yield from litdata.StreamingDataset(self.urls[0], shuffle=True, seed=self.seed)


def _lit_item(item: tuple[str, bytes, bytes]) -> dict[str, Any]:
    return {"__key__": item[0], "jpg": item[1], "label.png": item[2]}


def _decode_options(samples: list[tuple[bytes, bytes]], size: int) -> list[tuple[str, float]]:
    """Samples/s of decode + resize for each decoding option, single process."""
    big = []
    for jpg, _ in samples[:16]:  # a 4x upscaled copy shows when draft mode pays (VOC/COCO-sized JPEGs)
        im = Image.open(io.BytesIO(jpg)).convert("RGB")
        buf = io.BytesIO()
        im.resize((im.width * 4, im.height * 4)).save(buf, "JPEG", quality=90)
        big.append((buf.getvalue(), samples[0][1]))
    rows = []
    for name, data in (("toy-size", samples[:16]), ("4x-size", big)):
        for reduced in (False, True):
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                for jpg, png in data:
                    load_pair(jpg, png, size, False, reduced)
                    n += 1
            rows.append((f"PIL {name} {'draft' if reduced else 'full'}", n / (time.perf_counter() - t0)))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            decode_jpegs_torch([j for j, _ in data], size, dev)  # warm-up (nvJPEG init)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                decode_jpegs_torch([j for j, _ in data], size, dev)
                if dev == "cuda":
                    torch.cuda.synchronize()
                n += len(data)
            rows.append(
                (
                    f"torchvision {name} decode_jpeg({dev}) batch of {len(data)}, jpeg only",
                    n / (time.perf_counter() - t0),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="dataset shard folder with train/ (default: synthetic data)")
    parser.add_argument("--folds", help="folder with fold<i>.json and fold<i>/train.txt")
    parser.add_argument("--raw", help="folder holding VOCdevkit/ for the per-file loader")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--way", type=int, default=1)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--size", type=int, default=161)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring window per loader and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--no-reduced", dest="reduced", action="store_false")
    parser.add_argument("--no-litdata", dest="litdata", action="store_false")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.shards is None:
            paths = write_synthetic(tmp / "data", n_train=400, n_test=20, shard_max=50)
            shards_dir, folds, raw = paths["shards"], str(paths["folds"]), str(paths["raw"])
        else:
            shards_dir, folds, raw = Path(args.shards), args.folds, args.raw
        pairs = read_pairs(read_text(join_url(folds, f"fold{args.fold}/train.txt")))
        _, novel = read_fold(folds, args.fold)
        w, b = args.workers, args.batch

        # HSNet-style loaders read VOC's PNGs: keep the images that have one (SBD-only ones have .mat)
        voc_ids = {f.stem for f in (Path(raw) / VOC / "SegmentationClass").glob("*.png")}
        voc_pairs = {k: v for k, v in pairs.items() if k in voc_ids}

        def per_file(root: str) -> Any:
            ds = PerFileEpisodes(root, voc_pairs, novel, args.way, args.shot, args.size, 0, args.reduced)
            return _loader(ds, w, b)

        from train.stream.shard_io import read_shard, shard_urls

        mem = [
            (s["jpg"], s["label.png"])
            for url, _ in shard_urls(str(shards_dir / "train"))[:4]
            for s in read_shard(url)
            if s["__key__"] in pairs
        ]
        served = tmp / "served"
        served.mkdir()
        os.symlink(shards_dir.resolve(), served / "shards")
        os.symlink(Path(raw).resolve() / "VOCdevkit", served / "VOCdevkit")
        lat = f"HTTP +{args.latency_ms:g} ms/request"
        with slow_http_server(served, args.latency_ms / 1000) as url:
            loaders = {
                "ceiling": ("decode ceiling (in-memory bytes, same decode+resize)", lambda: _loader(
                    DecodeCeiling(mem, args.way, args.shot, args.size, b, 10**9, args.reduced), w, None)),
                "local": ("shard sampler, local shards", lambda: _loader(
                    _stream(str(shards_dir / "train"), folds, args), w, None)),
                "pf_local": ("per-file loader, local VOCdevkit", lambda: per_file(raw)),
                "http": (f"shard sampler, {lat}", lambda: _loader(
                    _stream(f"{url}/shards/train", folds, args), w, None)),
                "pf_http": (f"per-file loader, {lat}", lambda: per_file(url)),
            }  # fmt: skip
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            loaders["gpu_decode"] = (
                f"shard sampler, gpu_decode (nvJPEG in the train process, {dev})",
                lambda: _DecodeOn(
                    _loader(_stream(str(shards_dir / "train"), folds, args, True), w, None), dev
                ),
            )
            if args.litdata:
                try:
                    make = _litdata_loader(shards_dir, folds, args, tmp)
                    loaders["litdata"] = ("litdata optimize + StreamingDataset, same pools", make)
                except Exception as exc:  # the benchmark reports a failed optional backend and goes on
                    print(f"litdata: failed: {exc!r}")
            # rounds interleave the loaders so that load from other processes hits them alike
            rates: dict[str, list[float]] = {k: [] for k in loaders}
            for _ in range(args.rounds):
                for key, (_, make) in loaders.items():
                    rates[key].append(episodes_per_s(make(), args.seconds, b))
        r = {k: float(np.median(v)) for k, v in rates.items()}
        print(
            f"\n{args.way}-way {args.shot}-shot, batch {b}, {w} workers, size {args.size}, reduced decode "
            f"{args.reduced}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, median of {args.rounds}"
        )
        for key, (name, _) in loaders.items():
            spread = " ".join(f"{x:.0f}" for x in rates[key])
            print(f"{name:60s} {r[key]:8.1f} episodes/s   ({spread})")
        print(f"local shards / decode ceiling: {r['local'] / r['ceiling']:.2f}  (target >= 0.90)")
        print(f"local shards / per-file loader: {r['local'] / r['pf_local']:.2f}  (target >= 1)")
        print(f"HTTP shards / HTTP per-file: {r['http'] / r['pf_http']:.1f}x  (target >= 15x; bound here by "
              f"ceiling / HTTP per-file = {r['ceiling'] / r['pf_http']:.1f}x)")  # fmt: skip
        print(f"HTTP shards / local shards: {r['http'] / r['local']:.2f}  (target >= 0.95)")
        print("\ndecode options (samples/s, one process):")
        for name, rate in _decode_options(mem, args.size):
            print(f"  {name:70s} {rate:8.1f}")


if __name__ == "__main__":
    main()
