"""Fold class sets: the formulas of the notes, checked against explicit lists."""

import numpy as np
import pytest

from pipeline.folds import binary_label, fold_classes, novel_classes, training_label


def test_pascal_folds_are_contiguous_fives():
    assert novel_classes("pascal", 0) == [1, 2, 3, 4, 5]
    assert novel_classes("pascal", 3) == [16, 17, 18, 19, 20]


def test_coco_interleaved_and_contiguous():
    assert novel_classes("coco", 1)[:3] == [2, 6, 10] and novel_classes("coco", 1)[-1] == 78
    assert novel_classes("coco", 2, "contiguous") == list(range(41, 61))


@pytest.mark.parametrize("dataset", ["pascal", "coco"])
@pytest.mark.parametrize("split", ["interleaved", "contiguous"])
def test_folds_partition_the_classes(dataset, split):
    everything = []
    for fold in range(4):
        base, novel = fold_classes(dataset, fold, split)
        assert not set(base) & set(novel)
        everything += novel
    assert sorted(everything) == list(range(1, {"pascal": 21, "coco": 81}[dataset]))


def test_training_label_hides_novel_classes():
    label = np.array([[0, 1, 6], [255, 2, 7]], dtype=np.uint8)
    assert training_label(label, [1, 2], "denet").tolist() == [[0, 255, 6], [255, 255, 7]]
    assert training_label(label, [1, 2], "standard").tolist() == [[0, 0, 6], [255, 0, 7]]
    # the release: void is background before novel classes become 255
    assert training_label(label, [1, 2], "denet", "background").tolist() == [[0, 255, 6], [0, 255, 7]]
    # binary masks are cut from a label where novel classes are background
    assert binary_label(label, [1, 2], "background").tolist() == [[0, 0, 6], [0, 0, 7]]
    assert binary_label(label, [1, 2], "ignore").tolist() == [[0, 0, 6], [255, 0, 7]]
    with pytest.raises(ValueError, match="void rule"):
        training_label(label, [1], "denet", "keep")


def test_bad_fold_is_rejected():
    with pytest.raises(ValueError, match="fold 4"):
        novel_classes("pascal", 4)
