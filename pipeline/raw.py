"""DVC `raw` stage: the official archives (real, or toy ones packed here), verified and extracted."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params
from pipeline.download import DownloadError, download_dataset, missing_layout
from pipeline.io import read_record, write_json
from pipeline.netread import NetLimits
from pipeline.sources import sources_for
from pipeline.toy import build_mirror

log = logging.getLogger(__name__)

TOY_MIRROR = "mirror"  # <archives>/mirror holds the packaged toy archives, served like a lab mirror


def done_path(out: Path, dataset: str) -> Path:
    return out / f"{dataset}.done"


def _holds_layout(raw: Path, dataset: str) -> bool:
    return all(missing_layout(source, raw) is None for source in sources_for(dataset) if source.extract)


def certified_raw(raw: str | Path, dataset: str) -> Path:
    """The folder holding the extracted layouts that `<raw>/<dataset>.done` certifies.

    The marker is a cached DVC output, the raw folder is not (tens of GB): a `dvc exp run --temp` or
    queued experiment's copy of the repo, or a fresh clone after `dvc pull`, restores the marker
    without the folder and skips the `raw` stage. An experiment's copy then reads the folder of the
    workspace it was started from (DVC names it in DVC_ROOT) when that workspace's marker is the same
    record; anything else is a ConfigError saying how to rebuild. `raw` is returned as it is when it
    holds the layouts, or has no marker (a stage run by hand: the readers name what is missing).
    """
    raw = Path(raw)
    record = read_record(done_path(raw, dataset))
    if record is None or _holds_layout(raw, dataset):
        return raw
    origin = os.environ.get("DVC_ROOT")
    if origin and not raw.is_absolute() and Path(origin).resolve() != Path.cwd().resolve():
        theirs = Path(origin) / raw
        if read_record(done_path(theirs, dataset)) == record and _holds_layout(theirs, dataset):
            log.warning(
                "%s: reading the extracted %s data of this experiment's workspace, %s", raw, dataset, theirs
            )
            return theirs
    raise ConfigError(
        f"{done_path(raw, dataset)}: the marker is here (restored from the DVC cache) but not the extracted "
        f"{dataset} data it certifies, which DVC never caches; rebuild it in this workspace with "
        "`dvc repro --force raw`, then run again"
    )


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
