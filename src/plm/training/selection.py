"""Model selection against the pretrained features: did training help, on the validation classes?

A run's candidates are the pretrained features themselves (the backbone's L2-normalised pooled
features, what the user had before training) and every validated epoch (epoch 0 is the untrained
head). A trained candidate *qualifies* only when its validation MAP@R beats the pretrained
features' by more than a margin, and the selected model is the best qualified candidate, or the
pretrained features when none qualifies. So ``best.pt`` is never worse on validation than what the
user started from, and "training helped" means exactly "a candidate qualified".

The margin is the larger of ``eval.min_gain`` and a one-sided confidence bound: the gain must be
significant at level ``eval.confidence`` (default 0.95) over the *validation classes*. Each
class's gain is the mean, over its queries, of the paired per-query difference of AP@R (trained
minus pretrained, the same query in both); the margin is the Student-t quantile (one-sided,
``n_classes − 1`` degrees of freedom) times the standard error of the mean class gain. Classes,
not queries, are the unit because the question is whether the gain carries to other classes:
with two validation classes a gain must be large and consistent to count (the t quantile is
6.3), with 40 the margin is about 1.7 standard errors. docs/results.md compares the margin with
the seed-to-seed spread of the gain on the benchmarks.
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


def paired_gain(ap: np.ndarray, ap_ref: np.ndarray,
                groups: Optional[np.ndarray] = None) -> tuple[float, float, float, int]:
    """(mean of ``ap``, mean gain ``ap − ap_ref``, its standard error, number of units) over
    queries finite in both.

    Without ``groups`` the unit is the query; with ``groups`` (a class label per query) the gain
    of a class is the mean difference over its queries, and the mean gain and its standard error
    are taken over the classes. Queries with no other item of their class (NaN AP@R) are left out
    of both, as they are left out of MAP@R. Standard errors use the sample standard deviation
    (``ddof=1``; NaN with fewer than 2 units).

    Raises:
        ValueError: the arrays do not have the same length (they must score the same queries).
    """
    ap = np.asarray(ap, dtype=np.float64)
    ap_ref = np.asarray(ap_ref, dtype=np.float64)
    if ap.shape != ap_ref.shape or (groups is not None and np.shape(groups) != ap.shape):
        raise ValueError(f"the AP@R arrays (and groups) must score the same queries; got {ap.shape} and "
                         f"{ap_ref.shape}")
    ok = np.isfinite(ap) & np.isfinite(ap_ref)
    if not ok.any():
        return float("nan"), float("nan"), float("nan"), 0
    diff = ap[ok] - ap_ref[ok]
    if groups is not None:
        g = np.asarray(groups)[ok]
        diff = np.array([diff[g == c].mean() for c in np.unique(g)])
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(ap[ok].mean()), float(diff.mean()), se, int(diff.size)


def judge(ap: np.ndarray, ap_pretrained: np.ndarray, labels: Optional[np.ndarray], min_gain: float,
          confidence: float) -> Judgement:
    """Whether a candidate's validation AP@R beats the pretrained features' by more than the margin.

    Args:
        ap: per-query AP@R of the candidate on the validation split.
        ap_pretrained: per-query AP@R of the pretrained features on the same queries.
        labels: the class of each query (the unit of the standard error); ``None``: the queries.
        min_gain: the smallest gain that counts, in MAP@R.
        confidence: one-sided confidence level of the gain over the classes (0 = no test).
    """
    from scipy.stats import t as student_t

    value, gain, se, units = paired_gain(ap, ap_pretrained, labels)
    bound = 0.0
    if confidence > 0:
        bound = float(student_t.ppf(confidence, units - 1)) * se if units > 1 and math.isfinite(se) else math.inf
    margin = max(min_gain, bound)
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
