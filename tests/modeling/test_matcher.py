"""Matcher against a brute-force Python matcher on random quality matrices (with ties, values
exactly at thresholds and low-quality matches), empty inputs and argument errors."""
import pytest
import torch

from detzoo.modeling.matcher import Matcher


def _brute_force_labels(matrix, thresholds, labels, allow_low_quality_matches):
    """Labels per prediction from the definition, with Python lists and loops."""
    rows = matrix.tolist()
    num_gt, num_pred = len(rows), len(rows[0])
    # A tensor compared with a Python float compares in the tensor's dtype, so a float32
    # quality of 0.7 sits exactly at a threshold of 0.7; round the bounds the same way.
    rounded = torch.tensor(thresholds, dtype=matrix.dtype).tolist()
    bounds = [-float("inf")] + rounded + [float("inf")]
    result = []
    for n in range(num_pred):
        best = max(rows[m][n] for m in range(num_gt))
        interval = next(i for i in range(len(labels)) if bounds[i] <= best < bounds[i + 1])
        result.append(labels[interval])
    if allow_low_quality_matches:
        for m in range(num_gt):
            row_best = max(rows[m])
            for n in range(num_pred):
                if rows[m][n] == row_best:
                    result[n] = 1
    return result


def _random_quality(num_gt, num_pred, generator, levels=10):
    # Few distinct values so that ties (within rows and columns) and values exactly equal to
    # the thresholds are common.
    return torch.randint(0, levels + 1, (num_gt, num_pred), generator=generator).float() / levels


@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
@pytest.mark.parametrize(
    "thresholds, labels", [([0.3, 0.7], [0, -1, 1]), ([0.5], [0, 1]), ([0.4, 0.5, 0.5], [0, -1, 0, 1])]
)
def test_matches_brute_force(thresholds, labels, allow_low_quality_matches):
    g = torch.Generator().manual_seed(0)
    matcher = Matcher(thresholds, labels, allow_low_quality_matches=allow_low_quality_matches)
    for trial in range(30):
        num_gt = 1 + trial % 5
        num_pred = 1 + (trial * 7) % 23
        matrix = _random_quality(num_gt, num_pred, g)
        matches, match_labels = matcher(matrix)
        assert matches.dtype == torch.int64 and match_labels.dtype == torch.int8
        assert matches.shape == match_labels.shape == (num_pred,)
        # Each prediction's match is one of its best ground truths (any of them on a tie).
        torch.testing.assert_close(matrix[matches, torch.arange(num_pred)], matrix.max(dim=0).values)
        expected = _brute_force_labels(matrix, thresholds, labels, allow_low_quality_matches)
        assert match_labels.tolist() == expected


def test_low_quality_matches_hand_computed():
    # gt 0's best is 0.2, shared by predictions 1 and 3 (a tie): both become positive, and
    # keep their own best ground truth as match. Prediction 2 is a normal positive.
    matrix = torch.tensor([[0.1, 0.2, 0.0, 0.2], [0.0, 0.3, 0.8, 0.0]])
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = matcher(matrix)
    assert labels.tolist() == [0, 1, 1, 1]
    assert matches.tolist() == [0, 1, 1, 0]
    _, labels_strict = Matcher([0.3, 0.7], [0, -1, 1])(matrix)
    assert labels_strict.tolist() == [0, -1, 1, 0]


def test_threshold_boundaries_belong_to_upper_interval():
    matrix = torch.tensor([[0.3, 0.7, 0.29999, 0.69999]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1])(matrix)
    assert labels.tolist() == [-1, 1, 0, -1]


def test_no_ground_truth():
    for labels in ([0, -1, 1], [-1, 0, 1]):
        matches, match_labels = Matcher([0.3, 0.7], labels, allow_low_quality_matches=True)(torch.zeros(0, 5))
        assert matches.tolist() == [0] * 5 and matches.dtype == torch.int64
        assert match_labels.tolist() == [labels[0]] * 5 and match_labels.dtype == torch.int8


def test_no_predictions():
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(3, 0))
    assert matches.shape == labels.shape == (0,)


def test_non_contiguous_and_double():
    g = torch.Generator().manual_seed(1)
    matrix = _random_quality(6, 4, g).double().t()  # (4 gt, 6 predictions), transposed view
    assert not matrix.is_contiguous()
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = matcher(matrix)
    expected_matches, expected_labels = matcher(matrix.contiguous())
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(matrix[matches, torch.arange(6)], matrix.max(dim=0).values)


def test_does_not_modify_input_and_bad_inputs():
    matrix = torch.tensor([[0.5, 0.1]])
    before = matrix.clone()
    Matcher([0.3], [0, 1], allow_low_quality_matches=True)(matrix)
    assert torch.equal(matrix, before)
    matcher = Matcher([0.5], [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        matcher(torch.tensor([[-0.1, 0.5]]))
    with pytest.raises(ValueError, match=">= 0"):
        matcher(torch.tensor([[float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="2-D"):
        matcher(torch.zeros(3))


@pytest.mark.parametrize(
    "thresholds, labels, message",
    [
        ([0.0, 0.5], [0, -1, 1], "positive"),
        ([0.7, 0.3], [0, -1, 1], "non-decreasing"),
        ([0.3, 0.7], [0, 2, 1], "one of"),
        ([0.3, 0.7], [0, 1], "3 intervals"),
        ([], [1], "at least one"),
    ],
)
def test_bad_construction(thresholds, labels, message):
    with pytest.raises(ValueError, match=message):
        Matcher(thresholds, labels)


def test_thresholds_list_not_modified():
    thresholds = [0.3, 0.7]
    matcher = Matcher(thresholds, [0, -1, 1])
    assert thresholds == [0.3, 0.7]
    assert matcher.thresholds == [-float("inf"), 0.3, 0.7, float("inf")]
