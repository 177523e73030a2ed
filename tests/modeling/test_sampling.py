"""subsample_labels: counts and fractions, index validity, shortages, and the order of its
random draws (one randperm for positives, then one for negatives)."""
import pytest
import torch

from detzoo.modeling.sampling import subsample_labels


def _labels(num_ignore, num_bg, num_fg, generator, bg_label=0, fg_classes=(1, 2, 5)):
    parts = [
        torch.full((num_ignore,), -1),
        torch.full((num_bg,), bg_label),
        torch.tensor(fg_classes)[torch.randint(0, len(fg_classes), (num_fg,), generator=generator)],
    ]
    labels = torch.cat(parts)
    return labels[torch.randperm(len(labels), generator=generator)]


@pytest.mark.parametrize(
    "num_ignore, num_bg, num_fg, num_samples, fraction, expected_pos, expected_neg",
    [
        (10, 500, 100, 256, 0.5, 100, 156),  # few positives: negatives fill the sample
        (10, 500, 300, 256, 0.5, 128, 128),
        (10, 500, 300, 256, 0.25, 64, 192),
        (0, 20, 5, 256, 0.5, 5, 20),  # too few of both: everything labelled is drawn
        (5, 0, 0, 64, 0.5, 0, 0),
        (0, 50, 50, 0, 0.5, 0, 0),
        (0, 50, 50, 10, 0.33, 3, 7),  # int(10 * 0.33) = 3 positives
    ],
)
def test_counts(num_ignore, num_bg, num_fg, num_samples, fraction, expected_pos, expected_neg):
    g = torch.Generator().manual_seed(0)
    labels = _labels(num_ignore, num_bg, num_fg, g)
    pos_idx, neg_idx = subsample_labels(labels, num_samples, fraction, bg_label=0)
    assert pos_idx.dtype == neg_idx.dtype == torch.int64
    assert (len(pos_idx), len(neg_idx)) == (expected_pos, expected_neg)
    assert ((labels[pos_idx] != 0) & (labels[pos_idx] != -1)).all()
    assert (labels[neg_idx] == 0).all()
    assert len(set(pos_idx.tolist())) == len(pos_idx) and len(set(neg_idx.tolist())) == len(neg_idx)


def test_custom_background_label():
    labels = torch.tensor([3, 3, 0, 1, -1, 3, 2])
    pos_idx, neg_idx = subsample_labels(labels, 10, 0.5, bg_label=3)
    assert sorted(neg_idx.tolist()) == [0, 1, 5]
    assert sorted(pos_idx.tolist()) == [2, 3, 6]


def test_draw_order_matches_two_randperm_calls():
    # The reference is computed in the same process from the same seed, so it checks the
    # order and arguments of the random calls, not a particular PyTorch RNG stream.
    g = torch.Generator().manual_seed(1)
    labels = _labels(30, 400, 90, g)
    torch.manual_seed(123)
    pos_idx, neg_idx = subsample_labels(labels, 128, 0.25, 0)
    positive = ((labels != -1) & (labels != 0)).nonzero().squeeze(1)
    negative = (labels == 0).nonzero().squeeze(1)
    torch.manual_seed(123)
    expected_pos = positive[torch.randperm(len(positive))[:32]]
    expected_neg = negative[torch.randperm(len(negative))[:96]]
    assert torch.equal(pos_idx, expected_pos) and torch.equal(neg_idx, expected_neg)


def test_uniform_over_positives():
    labels = torch.tensor([1] * 8 + [0] * 8)
    counts = torch.zeros(16)
    torch.manual_seed(2)
    for _ in range(400):
        pos_idx, _ = subsample_labels(labels, 4, 0.5, 0)
        counts[pos_idx] += 1
    # Each positive is drawn with probability 2 / 8; 100 expected draws out of 400.
    assert counts[8:].sum() == 0
    assert (counts[:8] > 60).all() and (counts[:8] < 140).all()


def test_empty_and_bad_inputs():
    pos_idx, neg_idx = subsample_labels(torch.zeros(0, dtype=torch.int64), 16, 0.5, 0)
    assert pos_idx.shape == neg_idx.shape == (0,)
    with pytest.raises(ValueError, match="1-D"):
        subsample_labels(torch.zeros(2, 3), 4, 0.5, 0)
    with pytest.raises(ValueError, match="positive_fraction"):
        subsample_labels(torch.zeros(4), 4, 1.5, 0)
