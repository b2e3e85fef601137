"""Damaged shards: training skips them with a warning and a count; evaluation and verify stop, naming them."""

import contextlib
import logging
from pathlib import Path

import pytest
from faults import FullDisk, copy_shards, drop_member, fold0_stream
from raw_fixtures import write_params as raw_params
from train_helpers import fresh_checkpoint, write_params

from pipeline import shards as shards_stage
from pipeline.io import write_json
from pipeline.verify import verify_split
from train import evaluate as ev
from train import train as tr
from train.params import load_params
from train.stream.by_key import EvalEpisodes, SampleReader
from train.stream.manifests import build_manifest
from train.stream.shard_io import ShardError

_copy, _stream = copy_shards, fold0_stream


def test_training_skips_a_missing_shard_with_a_warning_and_a_count(tiny_data, tmp_path, caplog):
    train = _copy(tiny_data, tmp_path) / "train"
    gone = train / "train-000003.tar"
    gone.unlink()
    ds = _stream(tiny_data, train)
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"):
        assert len(list(ds)) == 10  # every batch of the epoch still comes
    assert ds.stats["skipped_shards"] and set(ds.stats["skipped_shards"]) == {str(gone)}
    assert any("skipping shard" in r.message and str(gone) in r.message for r in caplog.records)


def test_training_skips_a_sample_without_its_label_with_a_warning_and_a_count(tiny_data, tmp_path, caplog):
    train = _copy(tiny_data, tmp_path) / "train"
    key = drop_member(train, "train-000001.tar", "label.png")
    ds = _stream(tiny_data, train, episodes_per_epoch=200)
    with caplog.at_level(logging.WARNING, logger="train.stream.sampler"):
        batches = list(ds)
    assert len(batches) == 50
    shard = str(train / "train-000001.tar")
    assert f"{shard}:{key}" in ds.stats["skipped_samples"]
    assert any(key in r.message and shard in r.message and ".label.png" in r.message for r in caplog.records)
    used = {i for b in batches for i in b["query_id"]} | {
        s for b in batches for ways in b["support_ids"] for ids in ways for s in ids
    }
    assert key not in used


def _logged(live: Path, name: str) -> list[float]:
    rows = (live / f"plots/metrics/train/{name}.tsv").read_text().split("\n")[1:]
    return [float(r.split("\t")[1]) for r in rows if r]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_logs_the_skipped_shards_and_samples(tiny_data, tmp_path, workers):
    """The counts live in the loader workers; the trainer logs them through dvclive (per rank)."""
    from train_helpers import tiny_params

    train, live = _copy(tiny_data, tmp_path) / "train", tmp_path / "live"
    (train / "train-000003.tar").unlink()
    drop_member(train, "train-000001.tar", "label.png")
    # the streaming sampler skips damaged shards (manifest training reads by key and stops: its own test)
    p = tiny_params(
        sampler__workers=workers, train__steps=6, train__checkpoint_every=3, train__episodes="stream"
    )
    tr.run(p, train.parent, tiny_data["folds"], tmp_path / "m", live_dir=live, progress=False)
    shards, samples = _logged(live, "skipped_shards"), _logged(live, "skipped_samples")
    assert len(shards) == len(samples) == 6
    assert shards[-1] >= 2 and samples[-1] >= 2  # the damage is met again in the second epoch (steps 4-6)
    assert shards == sorted(shards) and samples == sorted(samples)  # totals since the start
    tr.run(tiny_params(train__episodes="stream"), tiny_data["shards"], tiny_data["folds"], tmp_path / "clean",
           live_dir=tmp_path / "clean_live", progress=False)  # fmt: skip
    assert set(_logged(tmp_path / "clean_live", "skipped_shards")) == {0.0}


def test_verify_names_shard_and_key_of_a_sample_missing_a_member(tiny_data, tmp_path, capsys):
    test = _copy(tiny_data, tmp_path) / "test"
    assert verify_split(test) == []
    key = drop_member(test, "test-000002.tar", "label.png")
    problems = verify_split(test)  # sha256 and size agree with the (rewritten) manifest
    assert problems == [f"{test / 'test-000002.tar'}: sample {key} has no .label.png member"]


def test_evaluation_stops_naming_shard_and_key_of_a_sample_missing_a_member(tiny_data, tmp_path):
    shards = _copy(tiny_data, tmp_path)
    manifest = build_manifest(str(shards), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 40)
    locations = SampleReader(str(shards / "test")).locations
    # damage a sample that the fixed episodes need (the last of its shard, so no offset moves)
    used = [(i, k) for i, e in enumerate(manifest["episodes"]) for k in [e["query"], *e["supports"][0]]]
    i, key = next((i, k) for i, k in used if locations[k].end is None)
    shard = locations[key].shard
    assert drop_member(shards / "test", shard, "label.png") == key
    with pytest.raises(ShardError, match=rf"{shard}: sample {key} has no \.label\.png member"):
        SampleReader(str(shards / "test")).fetch(key)
    ds = EvalEpisodes(manifest, str(shards / "test"), 32, "denet")
    with pytest.raises(ShardError, match=rf"{shard}: sample {key}"):
        ds[i]  # the test set never shrinks around a bad sample


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluate_cli_stops_naming_a_missing_shard_and_the_key(tiny_data, tmp_path, capsys, workers):
    shards = _copy(tiny_data, tmp_path)
    params = write_params(tmp_path, **{"sampler.workers": workers})
    p = load_params(params)
    manifest = build_manifest(str(shards), str(tiny_data["folds"]), "pascal", 0, 1, 1, "denet", 0, 8)
    write_json(tmp_path / "m.json", manifest)
    fresh_checkpoint(tmp_path / "c.pt", p)
    reader = SampleReader(str(shards / "test"))
    first = manifest["episodes"][0]["query"]
    shard = reader.locations[first].shard
    (shards / "test" / shard).unlink()
    argv = ["--params", str(params), "--shards", str(shards), "--checkpoint", str(tmp_path / "c.pt"),
            "--manifest", str(tmp_path / "m.json"), "--out", str(tmp_path / "r"),
            "--no-trivial"]  # fmt: skip
    assert ev.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{shards / 'test' / shard}: cannot read sample {first}" in err
    assert not (tmp_path / "r").exists()  # no metrics from a partial test set


def test_disk_full_mid_shard_write_publishes_nothing_complete(pascal_raw, tmp_path, monkeypatch, capsys):
    real = shards_stage.atomic_write

    @contextlib.contextmanager
    def tight(path, mode="wb"):
        with real(path, mode) as handle:
            yield FullDisk(handle, 3000) if Path(path).name == "train-000001.tar" else handle

    monkeypatch.setattr(shards_stage, "atomic_write", tight)
    out = tmp_path / "out"
    argv = ["--raw", str(pascal_raw), "--out", str(out), "--params", str(raw_params(tmp_path))]
    assert shards_stage.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("No space left on device")
    # nothing is published (not even the shard finished before the fault) and no temp folder is left
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert shards_stage.main(argv) == 0 and verify_split(out / "train") == []
