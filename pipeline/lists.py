"""Print a fold's (image, class) pairs in the HSNet list style, to diff against published lists."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPLIT_FILES = {"train": "train.txt", "val": "test.txt", "test": "test.txt"}


def find_folds_dir(data: str | Path, dataset: str, fold: int) -> Path:
    """The folder holding `fold<i>.json`: DIR itself (a `dvc repro` folds output) or `build`'s layout."""
    data = Path(data)
    for cand in (data, data / "folds" / dataset, data / dataset):
        if (cand / f"fold{fold}.json").is_file():
            return cand
    raise FileNotFoundError(f"{data}: no fold{fold}.json here, in folds/{dataset}/ or in {dataset}/")


def read_pairs(data: str | Path, dataset: str, fold: int, split: str) -> list[str]:
    """Lines `<image_id>__<class:02d>` of a fold's train or test (= HSNet's val) list."""
    import json

    folds_dir = find_folds_dir(data, dataset, fold)
    info = json.loads((folds_dir / f"fold{fold}.json").read_text())
    if info["dataset"] != dataset:
        raise ValueError(f"{folds_dir}: holds {info['dataset']} folds, not {dataset}")
    return (folds_dir / f"fold{fold}" / SPLIT_FILES[split]).read_text().splitlines()


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.lists --split val [--dataset pascal] [--fold 0] [--data DIR] [--out FILE]`."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", choices=("pascal", "coco"), default=None, help="default: params.yaml's")
    ap.add_argument("--fold", type=int, choices=range(4), default=None, help="default: params.yaml's")
    ap.add_argument("--split", choices=tuple(SPLIT_FILES), required=True, help="val = test queries")
    ap.add_argument("--data", default=None,
                    help="what the folds stage or `pipeline.build --out` wrote (default: the folds stage's "
                    "output, <paths.folds>/<source>/<dataset>/<protocol> of params.yaml)")  # fmt: skip
    ap.add_argument(
        "--params", default="params.yaml", help="read when --data, --dataset or --fold is not given"
    )
    ap.add_argument("--out", default=None, help="write here instead of stdout")
    args = ap.parse_args(argv)
    try:
        data, dataset, fold = args.data, args.dataset, args.fold
        if data is None or dataset is None or fold is None:
            from dataclasses import replace

            from pipeline.config import folds_dir, load_params

            p = load_params(args.params)
            dataset = dataset or p.dataset
            fold = p.fold if fold is None else fold
            data = data or folds_dir(replace(p, dataset=dataset))
        lines = read_pairs(data, dataset, fold, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lists: {exc}", file=sys.stderr)
        return 2
    text = "".join(line + "\n" for line in lines)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
