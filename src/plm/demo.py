"""The offline demo: unsupervised training on seen classes, zero-shot retrieval on unseen ones.

The glyph benchmark by default (Latin letters and digits seen, labels hidden; Greek and Cyrillic
letters unseen; :mod:`plm.data.glyphs`), or Fashion-MNIST (classes 0-4 seen, 5-9 unseen);
EfficientNet-Lite0 features at 64 px, frozen mode. Each method trains the embedding head with the
same data, budget and selection rule (validation MAP@R on held-out *seen* classes), then its best
checkpoint is scored on the unseen classes. Falls back to Fashion-MNIST, then scikit-learn's digits,
when fonts or files are missing.

:func:`run_demo` returns the results and writes ``results.json`` and a self-contained
``report.html`` (training curves, t-SNE maps before and after, retrieval galleries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # numpy is imported where used: ``plm demo --help`` reads VARIANTS only
    import numpy as np

from plm.training.registry import METHODS
from plm.utils.choices import DEMO_DATASETS

log = logging.getLogger(__name__)

#: Trainable variants: name → (method, config overrides): every registered method
#: (:data:`plm.training.methods.METHODS`) with its defaults, then the ablations (overrides of ``plm``).
VARIANTS: dict[str, tuple[str, dict]] = {
    **{name: (name, {}) for name in METHODS.names()},
    "plm-no-proxies": ("plm", {"proxies": {"num": 0}}),
    "plm-no-subset": ("plm", {"manifold": {"subset_selection": False}}),
    "plm-binary": ("plm", {"similarity": "binary"}),
}

#: What each preset trains (``pretrained`` is always evaluated) and on how many training images.
#: Every method gets the same budget: ``epochs`` × ``steps`` batches of 120 images.
#: On glyphs an epoch is every training image once as a seed (251 batches); Fashion-MNIST epochs are
#: ``steps`` batches of a ``train_limit`` subset. With the standard glyph demo's 5 epochs it took 165 s
#: on 2 idle CPU cores from an empty cache (README); ``--full`` trains the preset's 10.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"methods": ["plm"], "train_limit": 8000, "epochs": 4, "steps": 100, "glyph_epochs": 5},
    "standard": {"methods": list(METHODS.names()), "train_limit": 8000, "epochs": 4, "steps": 100,
                 "glyph_epochs": 5},
    "full": {"methods": list(VARIANTS), "train_limit": None, "epochs": 10, "steps": 200, "glyph_epochs": 10},
}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        dataset: the dataset used (``glyphs``, ``fashion-mnist``, or a fallback).
        methods: name → metrics (means over seeds; ``std`` and per-seed ``runs`` when several seeds).
        seconds: wall time of the whole demo.
        out_dir: where ``results.json`` and ``report.html`` were written.
    """

    dataset: str
    methods: dict[str, dict[str, Any]]
    seconds: float
    out_dir: Path
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` payload."""
        return {"dataset": self.dataset, "methods": self.methods, "seconds": round(self.seconds, 1),
                "notes": self.notes}



def pick_dataset(data_root: Optional[str] = None, dataset: str = "glyphs") -> tuple[str, Optional[str]]:
    """The demo's dataset and, when it had to fall back, why.

    ``glyphs`` (the default) needs installed fonts, ``fashion-mnist`` its IDX files; without them the
    demo falls back to Fashion-MNIST (from glyphs) and then to scikit-learn's digits.
    """
    from plm.data.base import DatasetNotFoundError
    from plm.data.fashion_mnist import find_fashion_mnist

    if dataset not in DEMO_DATASETS:
        raise ValueError(f"the demo runs on {', '.join(DEMO_DATASETS)}, not {dataset!r}")
    reasons = []
    if dataset == "glyphs":
        from plm.data.glyphs import load_glyphs

        try:
            load_glyphs("test", root=data_root)
            return "glyphs", None
        except DatasetNotFoundError as err:
            reasons.append(f"glyphs: {err}")
    if dataset in ("glyphs", "fashion-mnist"):
        try:
            find_fashion_mnist(data_root)
            return "fashion-mnist", "; ".join(reasons) or None
        except DatasetNotFoundError as err:
            reasons.append(f"Fashion-MNIST: {err}")
    return "digits", "; ".join(reasons) or None


def _aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over seeds, with the standard deviation and the runs when there are several."""
    import numpy as np

    keys = ["map_at_r", "r_precision", "nmi"]
    ks = list(runs[0]["recall_at"])
    mean = {"recall_at": {k: float(np.mean([r["recall_at"][k] for r in runs])) for k in ks},
            **{m: float(np.mean([r[m] for r in runs])) for m in keys}}
    helped = [r["training_helped"] for r in runs if r.get("training_helped") is not None]
    if helped:  # how many runs beat the pretrained features on validation
        mean["training_helped"] = f"{sum(helped)}/{len(helped)}"
    if len(runs) > 1:
        mean["std"] = {"recall_at": {k: float(np.std([r["recall_at"][k] for r in runs])) for k in ks},
                       **{m: float(np.std([r[m] for r in runs])) for m in keys}}
        mean["runs"] = list(runs)
    return mean


def _metrics_only(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("recall_at", "map_at_r", "r_precision", "nmi")}


def run_demo(out_dir: str | Path = "plm-demo", preset: str = "standard", methods: Optional[Sequence[str]] = None,
             seeds: Sequence[int] = (0,), epochs: Optional[int] = None, data_root: Optional[str] = None,
             overrides: Optional[Sequence[str]] = None, report: bool = True, progress: bool = True,
             echo: Callable[[str], None] = print, dataset: str = "glyphs", force: bool = False) -> DemoResult:
    """Train the chosen methods on the seen classes and compare them on the unseen classes.

    Args:
        out_dir: output folder (``results.json``, ``report.html``, one training folder per run).
        preset: ``quick`` (PLM only), ``standard`` (PLM and the peers) or ``full`` (also the
            ablations, on every training image).
        methods: explicit list of :data:`VARIANTS` names (overrides the preset's).
        seeds: one training run per seed and method; metrics are averaged.
        epochs: training epochs (default: the preset's).
        data_root: a font folder for glyphs, or the Fashion-MNIST folder (default: the usual places).
        overrides: extra ``key=value`` training-config overrides applied to every run.
        report: write ``report.html``.
        progress: show progress bars.
        echo: where progress lines go.
        dataset: ``glyphs`` (default), ``fashion-mnist`` or ``digits`` (see :func:`pick_dataset`).
        force: replace a ``results.json`` / ``report.html`` in ``out_dir`` that plm did not write.
    """
    from plm.training import default_config, train
    from plm.training.config import deep_merge

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    chosen = list(methods) if methods else list(PRESETS[preset]["methods"])
    unknown = [m for m in chosen if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    from plm.utils.paths import DEMO_JSON, HTML, check_run_folder

    start = time.perf_counter()
    out = check_run_folder(out_dir, {"results.json": DEMO_JSON, "report.html": HTML}, "--out", force=force)
    asked = dataset
    dataset, reason = pick_dataset(data_root, asked)
    notes = []
    if reason:
        notes.append(f"{asked} is not available ({reason}); using {dataset} instead.")
        echo(notes[-1])
    settings = PRESETS[preset]
    limit = settings["train_limit"] if dataset == "fashion-mnist" else None
    base: dict[str, Any] = {"data_root": data_root if dataset == asked and dataset != "digits" else None,
                            "epochs": epochs or (settings["glyph_epochs"] if dataset == "glyphs"
                                                 else settings["epochs"])}
    if dataset == "fashion-mnist":  # glyphs and digits are small enough for whole epochs
        base["sampler"] = {"batches_per_epoch": settings["steps"]}
    if limit:
        base["data"] = {"limit": limit}

    runs: dict[str, list[dict]] = {"pretrained": [], "initial": []}
    histories: dict[str, list[dict]] = {}
    first_result = None
    for name in chosen:
        method, extra = VARIANTS[name]
        runs[name] = []
        for seed in seeds:
            per_run: dict[str, Any] = {"seed": int(seed)}
            if runs["pretrained"]:  # the pretrained baseline is the same for every run: score it once
                per_run["eval"] = {"baseline": False}
            config = default_config(dataset, method=method, mode="frozen", overrides=list(overrides or []),
                                    **deep_merge(deep_merge(base, extra), per_run))
            echo(f"training {name} (seed {seed}, {config.epochs} epochs) ...")
            t0 = time.perf_counter()
            result = train(config, out / "runs" / f"{name}-seed{seed}", progress=progress)
            assert result.test_metrics is not None  # the demo's datasets all have a labelled test split
            echo(f"  {name} seed {seed}: test R@1 {result.test_metrics['recall_at']['1']:.4f} "
                 f"({time.perf_counter() - t0:.0f} s); {result.verdict}")
            runs[name].append({**_metrics_only(result.test_metrics), "training_helped": result.training_helped})
            if seed == seeds[0]:
                histories[name] = result.history
                if name == chosen[0]:
                    first_result = result
            if not runs["pretrained"] and result.baseline_metrics is not None:
                runs["pretrained"].append(_metrics_only(result.baseline_metrics))
            if not runs["initial"]:  # the PCA head is the same for every seed (see initial_head_metrics)
                runs["initial"].append(initial_head_metrics(config))
    summary = {name: _aggregate(r) for name, r in runs.items() if r}
    demo = DemoResult(dataset, summary, 0.0, out, notes)
    if report and first_result is not None:
        echo("writing report.html ...")
        write_report(out / "report.html", demo, first_result, histories)
    demo.seconds = time.perf_counter() - start
    from plm.utils.io import atomic_write_json

    atomic_write_json(demo.to_json(), out / "results.json")
    return demo


def initial_head_metrics(config, split: str = "test") -> dict[str, Any]:
    """Recall@K, MAP@R, R-precision and NMI of the untrained model a run starts from
    (:func:`plm.training.selection.untrained_metrics`)."""
    from plm.training.selection import untrained_metrics

    return _metrics_only(untrained_metrics(config, split))


def _test_views(result) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The test split with its pretrained (L2-normalised) features and the trained embeddings.

    Reads the frozen-mode feature cache the training run filled, so nothing is re-embedded.
    """
    import torch

    from plm.data import load_dataset
    from plm.evaluation import embed_dataset
    from plm.models import create_model
    from plm.training.pipeline import feature_config_of

    cfg = result.config
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root)
    feature_model = create_model(feature_config_of(cfg), pretrained=cfg.model.backbone_weights or True)
    feats = embed_dataset(feature_model, test, features=True, batch_size=cfg.eval.batch_size, progress=False)
    with torch.no_grad():
        x = torch.from_numpy(feats.vectors)
        before = torch.nn.functional.normalize(x, dim=1).numpy()
        after = result.model.head(x).numpy()
    return test, feats.labels, before, after


def _command() -> list[str]:
    """The command that made this run, as typed (``plm demo …``; from Python: the interpreter's command)."""
    import sys

    from plm.cli import invocation

    return invocation() or ["python", *sys.argv]


def _runs_of(out: Path) -> tuple[list[int], dict[str, str]]:
    """The seeds of the training runs under ``out/runs`` and each method's verdict line (its first seed's)."""
    import json

    seeds: set[int] = set()
    verdicts: dict[str, str] = {}
    for folder in sorted((out / "runs").glob("*-seed*")):
        name, _, seed = folder.name.rpartition("-seed")
        if not seed.isdigit():
            continue
        seeds.add(int(seed))
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and isinstance(summary.get("verdict"), str):
            verdicts.setdefault(name, summary["verdict"])
    return sorted(seeds), verdicts


def write_report(path: Path, demo: DemoResult, result, histories: dict[str, list[dict]],
                 queries_per_class: int = 1, k: int = 6) -> Path:
    """The self-contained ``report.html``: how the run was made, results (with a note on rows that equal
    another), retrieval galleries (pretrained and trained side by side), t-SNE maps with a legend, curves
    (:mod:`plm.viz.demo_report`)."""
    from plm.viz.demo_report import ReportData, ReportViews, demo_report_page, run_info

    trained = next(iter(histories))
    test, labels, before, after = _test_views(result)
    seeds, verdicts = _runs_of(Path(demo.out_dir))
    info = run_info(_command(), seeds or [int(result.config.seed)],
                    {"dataset": demo.dataset, "trained": f"{trained}, {result.config.epochs} epochs, "
                                                        f"{result.config.mode} mode, {result.config.model.backbone}"})
    views = ReportViews(test.load_image, labels, dict(test.class_names or {}), before, after)
    data = ReportData(demo.dataset, demo.methods, trained, histories, views, info, verdicts, list(demo.notes),
                      queries_per_class=queries_per_class, k=k)
    return demo_report_page(data).write(path)
