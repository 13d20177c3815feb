"""Model selection against the pretrained features: did training help, on the validation classes?

A run's candidates are the pretrained features themselves (the backbone's L2-normalised pooled
features, what the user had before training) and every validated epoch (epoch 0 is the untrained
head). A trained candidate *qualifies* only when its validation MAP@R beats the pretrained
features' by more than a margin, and the selected model is the best qualified candidate, or the
pretrained features when none qualifies. So ``best.pt`` is never worse on validation than what the
user started from, and "training helped" means exactly "a candidate qualified".

The margin is the larger of ``eval.min_gain`` and ``eval.gain_se`` standard errors of the gain,
the mean over validation queries of the paired per-query difference of AP@R (trained minus
pretrained, the same query in both). The standard error measures how much the gain would move on
another draw of validation queries; docs/results.md compares it with the seed-to-seed spread of
the gain on the benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: the epoch number that stands for the pretrained features in checkpoints and summaries
PRETRAINED = -1


@dataclass(frozen=True)
class Judgement:
    """One candidate against the pretrained features on the validation queries.

    Attributes:
        value: the candidate's validation MAP@R.
        gain: ``value`` minus the pretrained features' validation MAP@R.
        se: standard error of the gain (paired over queries; NaN with fewer than 2 queries).
        margin: what the gain must exceed.
        qualified: ``gain > margin``.
    """

    value: float
    gain: float
    se: float
    margin: float
    qualified: bool


def paired_gain(ap: np.ndarray, ap_ref: np.ndarray) -> tuple[float, float, float]:
    """(mean of ``ap``, mean of ``ap − ap_ref``, its standard error) over queries finite in both.

    Queries with no other item of their class (NaN AP@R) are left out of both, as they are left
    out of MAP@R. The standard error uses the sample standard deviation (``ddof=1``).

    Raises:
        ValueError: the two arrays do not have the same length (they must score the same queries).
    """
    ap = np.asarray(ap, dtype=np.float64)
    ap_ref = np.asarray(ap_ref, dtype=np.float64)
    if ap.shape != ap_ref.shape:
        raise ValueError(f"the two AP@R arrays must score the same queries; got {ap.shape} and {ap_ref.shape}")
    ok = np.isfinite(ap) & np.isfinite(ap_ref)
    if not ok.any():
        return float("nan"), float("nan"), float("nan")
    diff = ap[ok] - ap_ref[ok]
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(ap[ok].mean()), float(diff.mean()), se


def judge(ap: np.ndarray, ap_pretrained: np.ndarray, min_gain: float, gain_se: float) -> Judgement:
    """Whether a candidate's validation AP@R beats the pretrained features' by more than the margin.

    Args:
        ap: per-query AP@R of the candidate on the validation split.
        ap_pretrained: per-query AP@R of the pretrained features on the same queries.
        min_gain: the smallest gain that counts, in MAP@R.
        gain_se: how many standard errors of the gain it must also exceed.
    """
    value, gain, se = paired_gain(ap, ap_pretrained)
    margin = max(min_gain, gain_se * se) if math.isfinite(se) else max(min_gain, 0.0)
    return Judgement(value, gain, se, margin, bool(math.isfinite(gain) and gain > margin))


def verdict(selection: str, best_epoch: int, best_value: Optional[float], pretrained_value: Optional[float],
            margin: Optional[float] = None) -> str:
    """The one line a run ends with: whether training helped, and what ``best.pt`` holds.

    Args:
        selection: ``val_map_at_r`` or the label-free criterion's name.
        best_epoch: the selected epoch (:data:`PRETRAINED` for the pretrained features).
        best_value: its selection score.
        pretrained_value: the pretrained features' validation MAP@R (``None`` without validation).
        margin: the margin the selected epoch had to beat (validation only).
    """
    if selection != "val_map_at_r":
        return (f"no validation classes, so plm cannot tell whether training helped: best.pt is epoch {best_epoch}, "
                f"chosen by {selection.replace('_', ' ')} (a label-free criterion); compare it with the pretrained "
                f"features on labelled images of your own (plm eval) before relying on it")
    assert pretrained_value is not None and best_value is not None
    if best_epoch == PRETRAINED:
        return (f"training did not help: no epoch beat the pretrained features on the validation classes by more "
                f"than the margin (pretrained MAP@R {pretrained_value:.4f}), so best.pt is the pretrained features")
    return (f"training helped: epoch {best_epoch} beats the pretrained features on the validation classes, "
            f"MAP@R {best_value:.4f} against {pretrained_value:.4f} (+{best_value - pretrained_value:.4f}, "
            f"margin {margin if margin is not None else float('nan'):.4f})")
