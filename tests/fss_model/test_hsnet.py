"""HSNet's rules its golden file does not reach: the vote at a tie, N-way, refused backbones and sizes."""

from __future__ import annotations

import pytest
import torch

from fss_model import build_model
from fss_model.hsnet import HypercorrelationLearner, predict_mask_nshot, vote_scores
from fss_model.pairwise import combine_ways


def passes(votes: list[list[int]], shot: int) -> torch.Tensor:
    """[1, shot, 2, h, w] logits whose argmax gives pixel p foreground in the first votes[p] passes."""
    v = torch.tensor(votes)
    fg = (torch.arange(shot).view(shot, 1, 1) < v).float()  # [shot, h, w]
    return torch.stack([1 - fg, fg], dim=1)[None]


def test_vote_keeps_the_release_tie_rule_and_the_largest_count_divides():
    # 4 shots, largest count 4: a pixel with 2 votes is at the threshold (0.5 >= 0.5: foreground)
    logits = passes([[4, 2, 1, 0]], shot=4)
    assert predict_mask_nshot(logits).tolist() == [[[1, 1, 0, 0]]]
    scores = vote_scores(logits[:, None])  # [1, way 1, 2, h, w]
    assert scores.argmax(dim=2)[0, 0].tolist() == [[1, 1, 0, 0]]
    # the divisor is the episode's largest count, not the number of shots: 2 of 5 at most -> 1 and 2 win
    logits = passes([[2, 1, 0]], shot=5)
    assert predict_mask_nshot(logits).tolist() == [[[1, 1, 0]]]
    assert vote_scores(logits[:, None]).argmax(dim=2)[0, 0].tolist() == [[1, 1, 0]]
    # no vote anywhere: all background (the divisor is at least 1)
    assert predict_mask_nshot(passes([[0, 0]], shot=3)).sum() == 0


def two_way(a: list[list[int]], b: list[list[int]], shot: int) -> torch.Tensor:
    """Per-way binary predictions [2, h, w] of a 2-way K-shot episode whose ways get votes a and b."""
    logits = torch.stack([passes(a, shot)[0], passes(b, shot)[0]])[None]  # [1, 2, shot, 2, 1, w]
    return combine_ways(vote_scores(logits)).argmax(dim=2)[0, :, 0]


def test_two_way_k_shot_each_way_keeps_its_own_vote_and_the_larger_share_wins():
    pred = two_way([[5, 3, 0, 4]], [[0, 5, 1, 4]], shot=5)
    assert pred[0].tolist() == [1, 0, 0, 0]  # way 1: only where its share leads (a tie goes to neither)
    assert pred[1].tolist() == [0, 1, 0, 0]  # way 2's pixel 2 (1 vote of its largest 5) is not gated


def test_two_way_k_shot_a_stray_vote_does_not_take_another_ways_pixels():
    """Way 2's class is absent: one of its five supports votes for pixels 1 and 2 (its largest count is 1,
    so its own 1-way vote marks them). Way 1 has 4 and 3 votes of 5 there: the share decides, so way 1
    keeps pixel 1; pixel 2, where way 1 has no vote, goes to way 2. Dividing by each way's largest count
    would score way 2's stray vote 1.0 and hand it pixel 1 too."""
    pred = two_way([[4, 3, 0]], [[0, 1, 1]], shot=5)
    assert pred[0].tolist() == [1, 1, 0]
    assert pred[1].tolist() == [0, 0, 1]
    # equal counts: the more confident way's passes take the pixel (one tie in a 5-level share is common)
    a, b = passes([[3]], shot=5)[0], passes([[3]], shot=5)[0]
    b[:, 1] *= 2.0  # way 2's passes: the same argmax, larger foreground logits
    assert combine_ways(vote_scores(torch.stack([a, b])[None])).argmax(dim=2)[0, :, 0].tolist() == [[0], [1]]
    # 1-way keeps the release's rule: the largest count divides
    assert vote_scores(passes([[0, 1, 1]], shot=5)[:, None]).argmax(dim=2)[0, 0].tolist() == [[0, 1, 1]]


def test_backbones_without_block_taps_and_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="no block taps"):
        build_model("hsnet", backbone="densenet121", widths=(8, 8, 8))
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model("hsnet", backbone="small", widths=(8, 16, 30))
    # groups whose support sides do not shrink to one size cannot be mixed: one line naming the sizes
    learner = HypercorrelationLearner((1, 1, 1), (8, 16, 32), (8, 8, 8))
    corrs = [torch.rand(1, 1, 3, 3, 9, 9), torch.rand(1, 1, 5, 5, 9, 9), torch.rand(1, 1, 9, 9, 17, 17)]
    with pytest.raises(
        ValueError, match=r"support sizes differ between groups \(\[\(2, 2\), \(1, 1\), \(1, 1\)\]"
    ):
        learner(corrs)
    corrs[0] = torch.rand(1, 1, 3, 3, 3, 3)  # 3 -> 2 -> 1 -> 1, as the others
    assert learner(corrs).shape == (1, 2, 18, 18)  # twice the finest group's query size
