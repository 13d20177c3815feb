"""Selection against the pretrained features (plm.training.selection) and the label-free scores
(plm.evaluation.label_free), each against an explicit-loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plm.evaluation.label_free import effective_rank, knn_agreement
from plm.training.selection import PRETRAINED, judge, paired_gain, verdict


def _reference_paired_gain(ap, ref, groups=None):
    values, by_unit = [], {}
    for i, (a, b) in enumerate(zip(ap, ref, strict=True)):
        if math.isfinite(a) and math.isfinite(b):
            values.append(a)
            by_unit.setdefault(i if groups is None else groups[i], []).append(a - b)
    gains = [sum(d) / len(d) for d in by_unit.values()]
    n = len(gains)
    mean = sum(gains) / n
    var = sum((g - mean) ** 2 for g in gains) / (n - 1)
    return sum(values) / len(values), mean, math.sqrt(var / n), n


def test_paired_gain_matches_a_loop_and_leaves_out_queries_without_a_score(rng) -> None:
    ap = rng.random(50)
    ref = rng.random(50)
    ap[3] = np.nan  # a query with nothing of its class to retrieve
    ref[7] = np.nan
    labels = rng.integers(0, 6, 50)
    for groups in (None, labels):
        got = paired_gain(ap, ref, groups)
        want = _reference_paired_gain(ap, ref, groups)
        assert got[:3] == pytest.approx(want[:3], rel=1e-12) and got[3] == want[3]
    assert paired_gain(ap, ref, labels)[3] == 6
    with pytest.raises(ValueError, match="same queries"):
        paired_gain(ap, ref[:10])


def test_judge_tests_the_gain_over_the_validation_classes(rng) -> None:
    from scipy.stats import t as student_t

    labels = np.repeat(np.arange(10), 20)
    ref = rng.random(200)
    shifted = ref + 0.02  # every query gains exactly 0.02: no spread
    assert judge(shifted, ref, labels, 0.0, 0.95).qualified
    assert not judge(shifted, ref, labels, 0.05, 0.95).qualified  # below the minimum gain
    noisy = ref + 0.02 + rng.normal(0, 0.3, 200)  # a mean gain buried in noise
    j = judge(noisy, ref, labels, 0.0, 0.95)
    assert j.margin == pytest.approx(student_t.ppf(0.95, 9) * j.se) and j.qualified == (j.gain > j.margin)
    assert not judge(ref, ref, labels, 0.0, 0.95).qualified  # the pretrained features never beat themselves
    # with two classes a consistent gain must be large: the one-sided t quantile with 1 degree of freedom is 6.3
    two = np.repeat([0, 1], 100)
    gains = np.where(two == 0, 0.03, 0.05)
    j2 = judge(ref[:200] + gains, ref[:200], two, 0.0, 0.95)
    assert j2.margin == pytest.approx(6.3138 * 0.01, rel=1e-3) and not j2.qualified
    assert not judge(ref + 0.5, ref, np.zeros(200, int), 0.0, 0.95).qualified  # one class: it cannot be known
    assert judge(ref + 0.5, ref, np.zeros(200, int), 0.0, 0.0).qualified  # unless no test is asked for


def test_verdict_lines_say_what_best_pt_holds() -> None:
    assert "did not help" in verdict("val_map_at_r", PRETRAINED, 0.5, 0.5)
    assert "pretrained features" in verdict("val_map_at_r", PRETRAINED, 0.5, 0.5)
    assert "helped" in verdict("val_map_at_r", 3, 0.6, 0.5, 0.01) and "epoch 3" in verdict("val_map_at_r", 3, 0.6, 0.5)
    line = verdict("lf_agreement", 2, 0.3, None)
    assert "cannot tell" in line and "epoch 2" in line


def _reference_agreement(clean, views, k):
    n = len(clean)
    total = 0.0
    for i in range(n):
        d_own = sorted((float(((clean[i] - clean[j]) ** 2).sum()), j) for j in range(n) if j != i)
        d_view = sorted((float(((views[i] - clean[j]) ** 2).sum()), j) for j in range(n) if j != i)
        own = {j for _, j in d_own[:k]}
        seen = {j for _, j in d_view[:k]}
        total += len(own & seen) / k
    return total / n


def test_knn_agreement_matches_a_loop(rng) -> None:
    clean = rng.normal(size=(40, 6))
    views = clean + rng.normal(scale=0.3, size=clean.shape)
    for k in (1, 3, 10):
        got = knn_agreement(torch.from_numpy(clean), torch.from_numpy(views), k=k)
        assert got == pytest.approx(_reference_agreement(clean.astype(np.float32), views.astype(np.float32), k),
                                    abs=1e-6)
    assert knn_agreement(torch.from_numpy(clean), torch.from_numpy(clean), k=5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        knn_agreement(torch.zeros(3, 2), torch.zeros(4, 2))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 30), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_effective_rank_is_between_one_and_the_rank(n: int, d: int, seed: int) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)))
    r = effective_rank(x)
    assert 1.0 - 1e-9 <= r <= min(n - 1, d) + 1e-9
    # scale-free, and one direction only gives rank 1
    assert effective_rank(3.0 * x) == pytest.approx(r, rel=1e-9)
    line = torch.outer(torch.arange(n, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    assert effective_rank(line) == pytest.approx(1.0)
