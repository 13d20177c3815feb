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

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

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


# ------------------------------------------------------------------------------ a run's selection

def pair_loss(row: dict[str, Any]) -> float:
    """The selection score without a validation split: the epoch's mean pair term.

    PLM's total also holds L_proxy and L_neighbourhood, whose scale says nothing about the
    embedding (L_neighbourhood grows as the proxies spread); the pair term (``loss_point``) is
    what every method trains the embedding with. The peers' totals are their pair term.
    """
    return float(row["loss_point"] if row.get("loss_point") is not None else row["loss"])


def label_free_score(row: dict[str, Any], criterion: str) -> Optional[float]:
    """The selection score of an epoch's row without validation (``eval.label_free``); ``None``
    when the row has none (an epoch that was not evaluated)."""
    if criterion == "train_pair_loss":
        return pair_loss(row) if row.get("loss") is not None else None
    if criterion == "last_epoch":
        return float(row["epoch"])
    value = row.get(criterion)
    return None if value is None else float(value)


def val_columns(j: Optional[Judgement]) -> dict[str, Any]:
    """The validation columns of a ``metrics.csv`` row (empty values for an epoch not validated)."""
    if j is None:
        return {"val_map_at_r": None, "val_gain": None, "val_margin": None}
    return {"val_map_at_r": j.value, "val_gain": j.gain, "val_margin": j.margin}


def untrained_metrics(config: Any, split: str = "test") -> dict[str, Any]:
    """Retrieval metrics on ``split`` of the untrained model a run of ``config`` starts from (epoch 0).

    With ``model.head_init: pca`` (or ``pca_uncentered``) this is the centred (uncentred) PCA of the
    pretrained features, the same for every seed; with ``orthogonal`` it is the random head of
    ``config.seed``. It shows what training adds to (or takes from) its starting point. Built the way
    a run builds it (seeded, the same splits and pipeline), in one process; reseeds the global RNGs
    with ``config.seed``.
    """
    from plm.evaluation import retrieval_metrics
    from plm.evaluation.metrics import default_ks
    from plm.training.checkpoint import seed_everything
    from plm.training.distributed import init_distributed, resolve_device
    from plm.training.pipeline import build_pipeline
    from plm.training.splits import load_splits

    seed_everything(config.seed)  # the orthogonal head is drawn from the seeded global RNG, as in training
    splits = load_splits(config)
    ctx = init_distributed("cpu")
    pipeline = build_pipeline(config, splits, resolve_device(config.device, ctx), ctx, progress=False)
    embedded = pipeline.embed_split(getattr(splits, split), "student")
    assert embedded is not None  # a single process is rank 0
    vectors, labels = embedded
    return retrieval_metrics(vectors, labels, ks=config.eval.recall_at or default_ks(config.dataset),
                             with_nmi=config.eval.nmi)


@dataclass
class EpochZero:
    """The candidates a run starts with (epoch 0, before any step).

    Attributes:
        row: its ``metrics.csv`` row.
        commit_best: whether ``best.pt`` is written now.
        pretrained_best: whether the pretrained features are the best candidate (``best.pt`` holds them).
        message: the line to log (``None``: nothing to say).
    """

    row: dict[str, Any]
    commit_best: bool
    pretrained_best: bool
    message: Optional[str] = None


class RunSelection:
    """A run's model selection: every candidate judged on the validation classes against the
    pretrained features (or by ``eval.label_free`` without them), the best so far, the final test
    of the selected model and the run's summary.

    Every method is called on every rank (the validation embeds in shards in finetune mode, and the
    judgements are broadcast from rank 0).

    Args:
        config: the run's :class:`~plm.training.config.TrainConfig` (after :func:`~plm.training.sizing.fit_to_data`).
        splits: its :class:`~plm.training.splits.Splits`.
        pipeline: its pipeline (embeds the splits with the student, teacher or pretrained features).
        ctx: the distributed context.
        device: where the broadcast tensors live.

    Attributes:
        best: ``{"epoch", "value"}`` of the best candidate so far, with ``"margin"`` and
            ``"pretrained"`` (the pretrained features' validation MAP@R) when validating; saved in
            every checkpoint and restored on resume.
    """

    def __init__(self, config: Any, splits: Any, pipeline: Any, ctx: Any, device: Any) -> None:
        self.config, self.splits, self.pipeline, self.ctx, self.device = config, splits, pipeline, ctx, device
        self.best: dict[str, Any] = {"epoch": 0, "value": None}
        self._ap_pretrained: Optional[tuple[np.ndarray, np.ndarray]] = None  # validation AP@R, labels (rank 0)
        self._pretrained_scored = False

    @property
    def criterion(self) -> str:
        """``val_map_at_r`` with a validation split, the label-free ``eval.label_free`` without."""
        return "val_map_at_r" if self.splits.val is not None else self.config.eval.label_free

    @property
    def signals_on(self) -> bool:
        """Whether the label-free scores are recorded (``eval.signals``; by default only without validation)."""
        flag = self.config.eval.signals
        return self.splits.val is None if flag is None else bool(flag)

    # -------------------------------------------------------------------------- scores
    def label_free(self, net: str) -> dict[str, float]:
        """The label-free scores (:mod:`plm.evaluation.label_free`) of ``net`` (``student``, ``teacher``
        or ``pretrained``) on a seeded subset of training images; empty where the pipeline has none."""
        from plm.evaluation.label_free import effective_rank, knn_agreement

        pairs = self.pipeline.signal_pairs(net)
        if pairs is None:
            return {}
        clean, views = pairs
        return {"lf_agreement": knn_agreement(clean, views), "lf_rank": effective_rank(clean)}

    def _signals(self) -> dict[str, float]:
        out = dict(self.label_free(self.config.eval.model))
        out.update({f"{k}_pretrained": v for k, v in self.label_free("pretrained").items()})
        return out

    def _val_ap(self, which: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Per-query validation AP@R of ``which`` (``student``, ``teacher`` or ``pretrained``) and
        the queries' labels, on rank 0 (``None`` on the others)."""
        from plm.evaluation.metrics import query_ranks

        assert self.splits.val is not None
        split = self.splits.val
        res = self.pipeline.baseline_split(split) if which == "pretrained" else self.pipeline.embed_split(split, which)
        if res is None:
            return None
        # the row scan: on validation splits with few large classes it is several times faster
        # than the symmetric scan (3,000 Fashion-MNIST images, 2 classes: 1.3 s vs 5.1 s)
        return query_ranks(res[0], res[1], symmetric=False).ap_at_r, np.asarray(res[1])

    def _pretrained_ap(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if not self._pretrained_scored:
            self._ap_pretrained = self._val_ap("pretrained")
            self._pretrained_scored = True
        return self._ap_pretrained

    def validate(self) -> Optional[Judgement]:
        """The evaluated network (``eval.model``) on the validation split, judged against the
        pretrained features (:func:`judge`); ``None`` without a validation split."""
        if self.splits.val is None:
            return None
        pre = self._pretrained_ap()
        cur = self._val_ap(self.config.eval.model)
        if cur is None or pre is None:
            return self._broadcast(None)
        if not np.array_equal(cur[1], pre[1]):
            raise RuntimeError("the validation queries differ between the model and the pretrained features")
        e = self.config.eval
        return self._broadcast(judge(cur[0], pre[0], cur[1], e.min_gain, e.confidence))

    def pretrained_value(self) -> float:
        """Validation MAP@R of the pretrained features."""
        pre = self._pretrained_ap()
        return self._broadcast(judge(pre[0], pre[0], None, 0.0, 0.0) if pre is not None else None).value

    def _broadcast(self, j: Optional[Judgement]) -> Judgement:
        import torch

        value = torch.zeros(5, dtype=torch.float64, device=self.device)
        if j is not None:
            value[:] = torch.tensor([j.value, j.gain, j.se, j.margin, float(j.qualified)], dtype=torch.float64)
        v = self.ctx.broadcast(value).tolist()
        return Judgement(v[0], v[1], v[2], v[3], bool(v[4]))

    # -------------------------------------------------------------------------- the candidates
    def epoch_zero(self) -> Optional[EpochZero]:
        """The first candidates of a fresh run: with validation, the pretrained features and the
        untrained model (a trained epoch is kept only when it beats the pretrained features by more
        than the margin); without, the untrained model under the label-free criterion when the
        signals are recorded (``None`` otherwise)."""
        if self.splits.val is None:
            if not self.signals_on:
                return None
            row0 = {"epoch": 0, "step": 0, **self._signals()}
            score0 = label_free_score(row0, self.criterion)
            self.best = {"epoch": 0, "value": score0}
            return EpochZero(row0, score0 is not None, False)
        pre = self.pretrained_value()
        j0 = self.validate()
        assert j0 is not None
        row0 = {"epoch": 0, "step": 0, **val_columns(j0), "val_pretrained": pre}
        if self.signals_on:
            row0.update(self._signals())
        self.best = ({"epoch": 0, "value": j0.value, "margin": j0.margin} if j0.qualified
                     else {"epoch": PRETRAINED, "value": pre, "margin": None})
        self.best["pretrained"] = pre
        return EpochZero(row0, True, self.best["epoch"] == PRETRAINED,
                         f"epoch 0 (untrained): val MAP@R {j0.value:.4f} (pretrained features {pre:.4f})")

    def consider(self, epoch: int, row: dict[str, Any], validated: bool) -> bool:
        """Score the trained ``epoch`` (1-based) into its ``row`` and say whether it is the best so far."""
        judgement = self.validate() if validated else None
        if validated and self.signals_on:
            row.update(self.label_free(self.config.eval.model))
        if self.criterion == "val_map_at_r":
            row.update(val_columns(judgement))
            improved = judgement is not None and judgement.qualified and (
                self.best["epoch"] == PRETRAINED or judgement.value > self.best["value"])
            if improved:
                assert judgement is not None
                self.best.update({"epoch": epoch, "value": judgement.value, "margin": judgement.margin})
            return improved
        row["val_map_at_r"] = None
        score = label_free_score(row, self.criterion)
        prev = self.best.get("value")
        improved = score is not None and (prev is None or (
            score < prev if self.criterion == "train_pair_loss" else score > prev))
        if improved:
            self.best = {"epoch": epoch, "value": score}
        return improved

    # -------------------------------------------------------------------------- the outcome
    @property
    def kept_pretrained(self) -> bool:
        """Whether the pretrained features are the selected model."""
        return self.best["epoch"] == PRETRAINED

    def helped(self) -> Optional[bool]:
        """Whether a trained epoch beat the pretrained features on validation (``None``: no validation)."""
        if self.criterion != "val_map_at_r":
            return None
        return not self.kept_pretrained

    def verdict(self) -> str:
        """The one line the run ends with (:func:`verdict`)."""
        return verdict(self.criterion, int(self.best["epoch"]), self.best["value"], self.best.get("pretrained"),
                       self.best.get("margin"))

    def _metrics(self, split: Any, ks: list[int], baseline: bool) -> Optional[dict[str, Any]]:
        from plm.evaluation import retrieval_metrics

        res = self.pipeline.baseline_split(split) if baseline else self.pipeline.embed_split(split, "student")
        if res is None:
            return None
        vec, labels = res
        m = retrieval_metrics(vec, labels, ks=ks, with_nmi=self.config.eval.nmi)
        return {"dataset": self.config.dataset, "split": split.split, "skipped": len(split) - len(labels), **m}

    def test_ks(self) -> list[int]:
        """The Recall@K of the test report."""
        from plm.evaluation.metrics import default_ks

        return list(self.config.eval.recall_at or default_ks(self.config.dataset))

    def final_test(self) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]:
        """(test metrics of the selected model, test metrics of the pretrained features when
        ``eval.baseline``); ``None`` without a labelled test split. The pipeline's student must hold
        the selected epoch (the pretrained features need nothing loaded)."""
        if self.splits.test is None:
            return None, None
        ks, e = self.test_ks(), self.config.eval
        baseline = self._metrics(self.splits.test, ks, True) if e.baseline or self.kept_pretrained else None
        test = baseline if self.kept_pretrained else self._metrics(self.splits.test, ks, False)
        return test, baseline if e.baseline else None

    def summary(self, test: Optional[dict], baseline: Optional[dict], history: list[dict[str, Any]]) -> dict[str, Any]:
        """``summary.json``: the run, its selection, its verdict and its test metrics."""
        cfg, s = self.config, self.splits
        return {
            "dataset": cfg.dataset, "method": cfg.method, "mode": cfg.mode, "epochs": cfg.epochs, "seed": cfg.seed,
            "selection": self.criterion, "best_epoch": self.best["epoch"], "best_value": self.best["value"],
            "training_helped": self.helped(), "verdict": self.verdict(),
            "val_pretrained": self.best.get("pretrained"), "val_margin": self.best.get("margin"),
            "val_classes": s.val_classes, "train_images": self.pipeline.num_train,
            "val_images": len(s.val) if s.val is not None else 0,
            "test_images": len(s.test) if s.test is not None else 0,
            "world_size": self.ctx.world_size,
            "train_time_s": round(sum(r.get("time_s") or 0.0 for r in history), 2),
            "test": test, "pretrained_test": baseline,
        }

    def write_report(self, out: Path, test: Optional[dict[str, Any]], baseline: Optional[dict[str, Any]],
                     history: list[dict[str, Any]], log: logging.Logger) -> None:
        """Rank 0's end of a run: the verdict (a warning when training did not help: ``plm train``
        prints the other verdicts with its table), ``metrics.json`` (with a test split) and
        ``summary.json`` in ``out``, and the test line in ``log``."""
        from plm.utils.io import atomic_write_json

        if self.helped() is False:
            log.warning("%s", self.verdict())
        if test is not None:
            atomic_write_json(test, out / "metrics.json")
            log.info("test (%s): R@1 %.4f  MAP@R %.4f",
                     "pretrained features" if self.kept_pretrained else f"best epoch {self.best['epoch']}",
                     test["recall_at"][str(self.test_ks()[0])], test["map_at_r"])
        atomic_write_json(self.summary(test, baseline, history), out / "summary.json")
