"""Random sampling of positive and negative training examples (anchors, proposals)."""
from typing import Tuple

import torch

from detzoo.layers import nonzero_tuple

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw at most `num_samples` labelled elements, as many positives as allowed first.

    The number of positives is min(#positives, int(num_samples * positive_fraction)); the
    remaining slots go to negatives, min(#negatives, num_samples - positives drawn). Both are
    drawn uniformly without replacement, with one `torch.randperm` call for the positives
    followed by one for the negatives (Detectron2's order, so a seeded run draws the same
    elements).

    Args:
        labels (Tensor[N]): integer labels: -1 ignore, `bg_label` negative, anything else
            positive (a foreground class).
        num_samples (int): the most elements to return, positives and negatives together.
        positive_fraction (float): the largest share of `num_samples` given to positives.
        bg_label (int): the label of negatives.

    Returns:
        pos_idx, neg_idx (LongTensor): indices into `labels` of the drawn positives and
        negatives, in random order; together at most `num_samples` long.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"subsample_labels: labels must be a 1-D tensor, got {shape}")
    if num_samples < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"subsample_labels: need num_samples >= 0 and positive_fraction in [0, 1], got "
            f"num_samples={num_samples}, positive_fraction={positive_fraction}"
        )
    positive = nonzero_tuple((labels != -1) & (labels != bg_label))[0]
    negative = nonzero_tuple(labels == bg_label)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_order = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_order = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_order], negative[neg_order]
