"""The `episodes` stage: `python -m train.stream.episodes --shards DIR --folds DIR --out DIR`.

Reads `fold<i>.json`, `fold<i>/test.txt` and the test split's index.tsv and writes the fixed test
episodes of (params.fold, params.way, params.shot) as design.md's manifests, one `seed<k>.json` per
test seed in params `evaluate.seeds` (the training `seed` does not draw test episodes). The draws
live in train.stream.draw, the manifests in train.stream.manifests; this file is only the command,
so dvc.yaml's `train` stage does not depend on it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.io import write_json
from train.stream.draw import episodes_with_every_way, expected_with_every_way
from train.stream.manifests import TestSplit, build_manifest, manifest_file, read_test_split
from train.stream.shard_io import (
    ShardError,
)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="dataset shard folder holding train/ and test/")
    parser.add_argument("--folds", required=True, help="folder with fold<i>.json and fold<i>/test.txt")
    parser.add_argument("--out", required=True, help="folder to write seed<k>.json into")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        p = load_params(args.params)
        test = read_test_split(args.shards, args.folds, p.fold)
        manifests = {
            seed: build_manifest(
                args.shards,
                args.folds,
                p.dataset,
                p.fold,
                p.way,
                p.shot,
                p.protocol,
                seed,
                int(p.sampler.test_episodes),
                test=test,
            )
            for seed in p.evaluate.seeds
        }
    except (ValueError, ShardError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for seed, manifest in manifests.items():
        path = manifest_file(args.out, seed)
        write_json(path, manifest)
        print(f"{path}: {len(manifest['episodes'])} episodes, sha256 {manifest['sha256_of_episodes'][:12]}")
    if p.way == 2:
        print(both_ways_line(test, p, manifests))
    return 0


def both_ways_line(test: TestSplit, p: Any, manifests: dict[int, dict[str, Any]]) -> str:
    """How often the drawn 2-way queries hold both classes, against what the rule implies."""
    novel, pairs, image_classes = test
    share = expected_with_every_way(pairs, image_classes, novel, way=2, shot=p.shot, protocol=p.protocol)
    drawn = ", ".join(
        f"{episodes_with_every_way(m['episodes'], pairs)} of {len(m['episodes'])} (seed {seed})"
        for seed, m in manifests.items()
    )
    count = len(next(iter(manifests.values()))["episodes"])
    return (
        f"queries holding both classes (presence rule): {drawn}; the {p.protocol} rule implies "
        f"{share * count:.1f} of {count}"
    )


if __name__ == "__main__":
    sys.exit(main())
