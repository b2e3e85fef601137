"""--resume under other data, fold lists matching no shard (both training paths), a label of another size."""

import io
import shutil

import pytest
from faults import copy_shards, replace_member
from PIL import Image
from train_helpers import write_params

from train import train as tr
from train.checkpoint import load_checkpoint
from train.stream.by_key import SampleReader
from train.stream.sampler import FOLD_LISTS_ELSEWHERE
from train.stream.shard_io import ShardError


def test_resume_under_another_fold_or_seed_is_refused_naming_what_differs(tiny_data, tmp_path, capsys):
    out = tmp_path / "m"
    params = write_params(tmp_path, **{"train.steps": 2})
    argv = ["--params", str(params), "--shards", str(tiny_data["shards"]),
            "--folds", str(tiny_data["folds"]), "--out", str(out), "--no-progress"]  # fmt: skip
    assert tr.main(argv) == 0
    before = (out / tr.LAST).read_bytes()
    capsys.readouterr()
    assert tr.main([*argv, "--resume", "--set", "fold=1", "seed=3", "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fold: 0 -> 1; seed: 0 -> 3" in err and str(out / tr.LAST) in err
    assert (out / tr.LAST).read_bytes() == before  # the checkpoint is neither trained on nor relabelled
    assert tr.main([*argv, "--resume", "--set", "train.steps=4"]) == 0  # the same data resumes
    assert load_checkpoint(out / tr.LAST)["step"] == 4


@pytest.mark.parametrize("episodes", ["manifest", "stream"])
def test_fold_lists_matching_no_shard_stop_both_training_paths_with_one_line(tiny_data, tmp_path, capsys,
                                                                              episodes):  # fmt: skip
    folds = tmp_path / "folds"
    shutil.copytree(tiny_data["folds"], folds)
    train_txt = folds / "fold0" / "train.txt"
    # another build's image ids: none of them is in these shards
    train_txt.write_text("".join(f"9999_{line.split('_', 1)[1]}\n" for line in train_txt.read_text().split()))
    params = write_params(tmp_path, **{"train.episodes": episodes})
    argv = ["--params", str(params), "--shards", str(tiny_data["shards"]), "--folds", str(folds),
            "--out", str(tmp_path / "m"), "--no-progress"]  # fmt: skip
    assert tr.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and FOLD_LISTS_ELSEWHERE in err and "KeyError" not in err


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return buf.getvalue()


def test_a_label_of_another_size_than_its_image_is_a_shard_error(tiny_data, tmp_path):
    shards = copy_shards(tiny_data, tmp_path)
    key = replace_member(shards / "test", "test-000000.tar", "label.png", _png((4, 4)))
    reader = SampleReader(str(shards / "test"))
    with pytest.raises(
        ShardError, match=rf"test-000000\.tar: sample {key}: \.label\.png is 4x4, its \.jpg 48x40"
    ):
        reader.fetch(key)
