"""DVC `raw` stage: the official archives (real, or toy ones packed here), verified and extracted."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params
from pipeline.download import DownloadError, download_dataset
from pipeline.io import write_json
from pipeline.netread import NetLimits
from pipeline.toy import build_mirror

TOY_MIRROR = "mirror"  # <archives>/mirror holds the packaged toy archives, served like a lab mirror


def done_path(out: Path, dataset: str) -> Path:
    return out / f"{dataset}.done"


def run_raw(params: Params, out: str | Path, archives: str | Path, progress: bool = True) -> dict:
    """Fill `out` with the extracted official layouts of `params.dataset`; returns the `.done` record.

    The toy source goes through the same fetch + verify + extract path as the official one, from
    a local mirror folder whose archive digests are recorded beside the archives.
    """
    out, archives = Path(out), Path(archives)
    done = done_path(out, params.dataset)
    with contextlib.suppress(FileNotFoundError):
        done.unlink()  # a failed re-run must not leave the previous marker behind
    record: dict = {"dataset": params.dataset, "source": params.source}
    d = params.download
    if params.source == "toy":
        mirror_dir = archives / TOY_MIRROR
        toy = build_mirror(mirror_dir, params.dataset, params.toy.seed, params.toy.scale)
        mirror, checksums = str(mirror_dir), toy["archives"]
        record["toy"] = {"seed": params.toy.seed, "scale": params.toy.scale}
    else:
        mirror, checksums = params.download.mirror, None
    record["files"] = download_dataset(
        params.dataset,
        out,
        archives,
        mirror=mirror,
        checksums=checksums,
        retries=params.download.retries,
        timeout_s=params.download.timeout_s,
        progress=progress,
        limits=NetLimits(d.min_bytes_per_s, d.rate_window_s, d.deadline_s, where="download"),
    )
    write_json(done, record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="extract the official layouts here")
    parser.add_argument("--archives", required=True, type=Path, help="keep the verified archives here")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        record = run_raw(load_params(args.params), args.out, args.archives)
    except (ConfigError, DownloadError, ValueError, OSError) as exc:  # OSError: e.g. disk full
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, digest in record["files"].items():
        print(f"{name}  {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
