"""Matcher: assigns each prediction (anchor, proposal) at most one ground-truth element and a
label -1 (ignore), 0 (negative) or 1 (positive) from an M x N match-quality (e.g. IoU) matrix."""
from typing import List, Sequence, Tuple

import torch

from detzoo.layers import nonzero_tuple

__all__ = ["Matcher"]

_ALLOWED_LABELS = (-1, 0, 1)


def _check_thresholds_and_labels(thresholds: Sequence[float], labels: Sequence[int]) -> None:
    if len(thresholds) == 0:
        raise ValueError("Matcher: thresholds must hold at least one value")
    if not thresholds[0] > 0:
        raise ValueError(f"Matcher: thresholds must be positive, got {list(thresholds)}")
    if any(low > high for low, high in zip(thresholds[:-1], thresholds[1:])):
        raise ValueError(f"Matcher: thresholds must be non-decreasing, got {list(thresholds)}")
    if any(label not in _ALLOWED_LABELS for label in labels):
        raise ValueError(f"Matcher: labels must each be one of {_ALLOWED_LABELS}, got {list(labels)}")
    if len(labels) != len(thresholds) + 1:
        raise ValueError(
            f"Matcher: {len(thresholds)} thresholds split qualities into {len(thresholds) + 1} "
            f"intervals, which need as many labels; got {len(labels)} labels ({list(labels)})"
        )


class Matcher:
    """Matches predictions to ground truth by a quality matrix.

    Every prediction gets the ground-truth element of highest quality (its "match") and a
    label from the interval that quality falls in. With thresholds [0.3, 0.7] and labels
    [0, -1, 1]: quality < 0.3 is negative, 0.3 <= quality < 0.7 is ignored and
    quality >= 0.7 is positive (each interval includes its lower bound).

    With `allow_low_quality_matches`, every prediction that has the highest quality with some
    ground-truth element (ties included) is labelled positive even below the top threshold,
    so that every ground truth gets at least one positive (case (i) of RPN's assignment in
    Faster R-CNN, Sec. 3.1.2). Its match stays its own best ground truth.
    """

    def __init__(self, thresholds: List[float], labels: List[int], allow_low_quality_matches: bool = False):
        """
        Args:
            thresholds (list[float]): positive, non-decreasing bounds between intervals.
            labels (list[int]): one of -1, 0, 1 per interval, len(thresholds) + 1 values.
            allow_low_quality_matches (bool): also label positive each ground truth's best
                predictions (see the class docstring).
        """
        thresholds = list(thresholds)
        labels = list(labels)
        _check_thresholds_and_labels(thresholds, labels)
        self.thresholds = [-float("inf")] + thresholds + [float("inf")]
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            match_quality_matrix (Tensor[M, N]): quality of (ground truth m, prediction n),
                all >= 0 (e.g. IoU).

        Returns:
            matches (LongTensor[N]): index in [0, M) of each prediction's best ground truth;
                0 for every prediction when M == 0.
            match_labels (Int8Tensor[N]): -1, 0 or 1 per prediction. With no ground truth,
                every prediction gets the label of the lowest interval (`labels[0]`), as if
                its quality were 0.
        """
        if not isinstance(match_quality_matrix, torch.Tensor) or match_quality_matrix.dim() != 2:
            shape = tuple(match_quality_matrix.shape) if isinstance(match_quality_matrix, torch.Tensor) else None
            raise ValueError(
                f"Matcher: match_quality_matrix must be a 2-D (M ground truth, N predictions) "
                f"tensor, got {shape if shape is not None else type(match_quality_matrix).__name__}"
            )
        num_predictions = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            matches = match_quality_matrix.new_full((num_predictions,), 0, dtype=torch.int64)
            match_labels = match_quality_matrix.new_full((num_predictions,), self.labels[0], dtype=torch.int8)
            return matches, match_labels
        # The low-quality rule finds the best predictions by equality with the row maximum;
        # negative (or NaN) qualities would make that ill-defined.
        if not bool((match_quality_matrix >= 0).all()):
            raise ValueError("Matcher: match_quality_matrix must be >= 0 everywhere (and not NaN)")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = self._label_by_interval(matched_vals)
        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    def _label_by_interval(self, matched_vals: torch.Tensor) -> torch.Tensor:
        """Int8Tensor[N]: the label of the interval [low, high) holding each quality."""
        match_labels = torch.ones_like(matched_vals, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_interval = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_interval] = label
        return match_labels

    def set_low_quality_matches_(self, match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        """Label positive (in place) every prediction that is, for some ground truth, one of
        the predictions of highest quality with it (all of them when several tie).

        Args:
            match_labels (Int8Tensor[N]): modified in place.
            match_quality_matrix (Tensor[M, N]): as in `__call__`.
        """
        highest_quality_per_gt = match_quality_matrix.max(dim=1).values
        _, best_prediction_indices = nonzero_tuple(match_quality_matrix == highest_quality_per_gt[:, None])
        match_labels[best_prediction_indices] = 1
