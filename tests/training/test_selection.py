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


def _reference_paired_gain(ap, ref):
    diffs, values = [], []
    for a, b in zip(ap, ref, strict=True):
        if math.isfinite(a) and math.isfinite(b):
            diffs.append(a - b)
            values.append(a)
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return sum(values) / n, mean, math.sqrt(var / n)


def test_paired_gain_matches_a_loop_and_leaves_out_queries_without_a_score(rng) -> None:
    ap = rng.random(50)
    ref = rng.random(50)
    ap[3] = np.nan  # a query with nothing of its class to retrieve
    ref[7] = np.nan
    got = paired_gain(ap, ref)
    want = _reference_paired_gain(ap, ref)
    assert got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="same queries"):
        paired_gain(ap, ref[:10])


def test_judge_needs_the_gain_to_exceed_both_margins(rng) -> None:
    ref = rng.random(200)
    shifted = ref + 0.02  # every query gains exactly 0.02: no spread
    assert judge(shifted, ref, 0.0, 2.0).qualified
    assert not judge(shifted, ref, 0.05, 2.0).qualified  # below the minimum gain
    noisy = ref + 0.02 + rng.normal(0, 0.5, 200)  # a mean gain buried in noise
    j = judge(noisy, ref, 0.0, 2.0)
    assert j.margin == pytest.approx(2 * j.se) and j.qualified == (j.gain > 2 * j.se)
    assert not judge(ref, ref, 0.0, 2.0).qualified  # the pretrained features never beat themselves


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
