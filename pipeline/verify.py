"""Re-read shards against their manifest: report missing, corrupt, truncated, unsafe or unlisted shards,
and datasets without their completion record."""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from pipeline.io import sha256_file
from pipeline.shard_format import (
    COMPLETE,
    ShardError,
    check_completion,
    check_shard_name,
    index_rows,
    member_limit,
)
from pipeline.shards import read_shard_with_offsets

MEMBERS = ("jpg", "json", "label.png")  # every sample's members (docs/design.md)


def verify_split(split_dir: str | Path, deep: bool = True) -> list[str]:
    """Problems of one split folder (empty = good); `deep` also re-parses every tar."""
    split_dir = Path(split_dir)
    manifest_path = split_dir / "manifest.json"
    if not manifest_path.is_file():
        return [f"{split_dir}: manifest.json is missing (split incomplete)"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{manifest_path}: corrupt manifest ({exc})"]
    problems = []
    listed = set()
    total = 0
    offsets: dict[tuple[str, int], str] = {}  # (shard, offset) -> key, from the deep parse
    for shard in manifest["shards"]:
        try:  # a manifest is data: a name that is not a plain file name is never opened
            name = check_shard_name(shard.get("name"), str(manifest_path))
        except ShardError as exc:
            problems.append(str(exc))
            continue
        path = split_dir / name
        listed.add(name)
        total += shard["num_samples"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if path.stat().st_size != shard["bytes"]:
            problems.append(f"{path}: corrupt: {path.stat().st_size} bytes, manifest says {shard['bytes']}")
            continue
        if sha256_file(path) != shard["sha256"]:
            problems.append(f"{path}: corrupt: sha256 differs from the manifest")
            continue
        if deep:
            try:
                keys = []
                for key, off, members in read_shard_with_offsets(path, member_limit(shard["bytes"])):
                    keys.append((key, off))
                    problems += [
                        f"{path}: sample {key} has no .{ext} member" for ext in MEMBERS if ext not in members
                    ]
                n = len(keys)
                offsets |= {(shard["name"], off): key for key, off in keys}
            except (tarfile.TarError, OSError) as exc:
                problems.append(f"{path}: corrupt tar ({exc})")
                continue
            except ShardError as exc:
                problems.append(str(exc))
                continue
            if n != shard["num_samples"]:
                problems.append(f"{path}: {n} samples, manifest says {shard['num_samples']}")
    if total != manifest["num_samples"]:
        claimed = manifest["num_samples"]
        problems.append(f"{manifest_path}: shards hold {total} samples, num_samples says {claimed}")
    if deep and not problems:
        problems += _check_index(split_dir / "index.tsv", offsets)
    for extra in sorted(split_dir.glob("*.tar")):
        if extra.name not in listed:
            problems.append(f"{extra}: not listed in the manifest")
    return problems


def _check_index(path: Path, offsets: dict[tuple[str, int], str]) -> list[str]:
    """Every index row must point at the start of its own sample."""
    if not path.is_file():
        return [f"{path}: missing"]
    with open(path) as handle:
        try:
            for line_no, row in index_rows(handle, str(path)):
                check_shard_name(row["shard"], f"{path}:{line_no}")
                where = (row["shard"], row["offset"])
                if offsets.get(where) != row["image_id"]:
                    return [f"{path}:{line_no}: {row['image_id']} is not at {where[0]} offset {where[1]}"]
        except ShardError as exc:
            return [str(exc)]
    return []


def verify_tree(root: str | Path, deep: bool = True) -> tuple[int, list[str]]:
    """(splits checked, problems) for every split folder under `root` (one holding a manifest or tars)."""
    root = Path(root)
    dirs = {p.parent for p in root.rglob("manifest.json")} | {p.parent for p in root.rglob("*.tar")}
    if not dirs:
        return 0, [f"{root}: no manifest.json or shard found"]
    problems = []
    for d in sorted(dirs):
        problems += verify_split(d, deep)
        problems += _check_completion(d)
    return len(dirs), problems


def _check_completion(split_dir: Path) -> list[str]:
    """The dataset folder above `split_dir` must hold the completion record listing this split."""
    record_path = split_dir.parent / COMPLETE
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        record = None
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{record_path}: unreadable completion record ({exc})"]
    try:
        manifest = json.loads((split_dir / "manifest.json").read_text())
        num_samples = int(manifest["num_samples"])
    except (OSError, ValueError, KeyError, TypeError):
        num_samples = None  # verify_split already reports the manifest
    try:
        check_completion(record, str(record_path), split_dir.name, num_samples)
    except ShardError as exc:
        return [str(exc)]
    return []


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.verify DIR [--fast]`; exit 1 if any shard is missing or corrupt."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", help="a split folder or any folder above split folders")
    ap.add_argument("--fast", action="store_true", help="sizes and sha256 only, no tar re-parse")
    args = ap.parse_args(argv)
    count, problems = verify_tree(args.root, deep=not args.fast)
    for line in problems:
        print(line)
    print(f"verify: {count} split(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
