"""The piecewise-linear model + similarity: batch cost vs a training step, and dataset scale.

Cases (each in its own subprocess, so wall time and peak resident memory are its own):

- ``batch``: ``similarity_matrix`` on B = 120 points at d = 128 and 512 (median of repeats), next
  to the explicit-loop reference (``plm.manifold.reference``) on the same input; at d = 1024 (the
  glyph head) with K_c = 16 candidates per anchor (the library default), the whole batch, and the
  anchor's seed group of 5 (the glyph default).
- ``step``: one training step of EfficientNet-Lite0 at 64 px on 120 images, the yardstick of the
  batch case: fine-tuning (forward + backward through the backbone, AdamW), frozen backbone
  (no-grad forward + head step) and head only (cached features).
- ``dataset``: ``sparse_similarity`` at N = 10,000 and 60,000 × 512 (exact blockwise k-NN, then
  pieces and the similarity of each point's 16 nearest neighbours), split into k-NN, pieces and
  pair scoring; at 60,000 also with the approximate (faiss IVF) k-NN and its recall. The reference
  runs on 100 anchors of the 10,000 set and is extrapolated (marked so).
- ``report``: ``plm similarity-report --features`` on 60,000 × 512 SOP-like features (12,000
  classes of 5) with every estimator: wall time and peak memory of the whole command.

Synthetic data: SOP-like classes (5 points each) with a decaying spectrum (σ_i ∝ i^-1/2), unit norm.

    python -m benchmarks manifold              # everything
    python -m benchmarks.bench_manifold --cases batch step
    python -m benchmarks.bench_manifold --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CASES = ("batch", "step", "dataset", "report")


def make_points(n: int, dim: int, per_class: int = 5, seed: int = 0) -> np.ndarray:
    """Unit-norm synthetic embeddings: classes of ``per_class`` around centres, decaying spectrum."""
    rng = np.random.default_rng(seed)
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    n_classes = -(-n // per_class)
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32) * spec
    x = centres[np.arange(n) // per_class] + 0.35 * rng.standard_normal((n, dim), dtype=np.float32) * spec
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


def run_case(case: str, arg: str, threads: int) -> dict:
    """Run one measurement in this process and return it as a dict."""
    import torch

    torch.set_num_threads(threads)
    from plm.manifold import ManifoldConfig, fit_pieces, knn_candidates, neighbor_similarity, similarity_matrix
    from plm.manifold.reference import reference_similarity

    cfg = ManifoldConfig()
    out: dict = {"case": case, "arg": arg, "threads": threads}
    if case == "batch":
        dim, _, kc = arg.partition(":")
        d = int(dim)
        if kc == "group":  # the glyph default: candidates from the anchor's seed group of 5
            cfg = ManifoldConfig(group_size=5)
        elif kc:
            cfg = ManifoldConfig(max_candidates=None if kc == "all" else int(kc))
        x = torch.from_numpy(make_points(120, d))
        similarity_matrix(x, cfg)  # warm-up
        base = _rss_mib()
        out["seconds"] = _median_time(lambda: similarity_matrix(x, cfg), 20)
        out["cpu_seconds"] = _median_time(lambda: similarity_matrix(x, cfg), 20, time.process_time)
        out["peak_rss_mib"], out["rss_before_mib"] = _rss_mib(), base
        out["mean_group_size"] = float(fit_pieces(x, cfg).sizes.float().mean())
        start = time.perf_counter()
        ref = reference_similarity(x.numpy(), cfg)
        out["reference_seconds"] = time.perf_counter() - start
        out["max_abs_diff_vs_reference"] = float(np.abs(similarity_matrix(x, cfg).numpy() - ref).max())
    elif case == "step":
        out.update(_training_steps(torch))
    elif case == "dataset":
        n, approximate = int(arg.split(":")[0]), arg.endswith(":ivf")
        x = torch.from_numpy(make_points(n, 512))
        base = _rss_mib()
        cpu = time.process_time()
        start = time.perf_counter()
        _, nbr = knn_candidates(x, 16, approximate=approximate)
        t_knn = time.perf_counter() - start
        pieces = fit_pieces(x, cfg, candidates=nbr)
        t_fit = time.perf_counter() - start - t_knn
        values = neighbor_similarity(pieces, nbr, cfg)
        total = time.perf_counter() - start
        out.update(seconds=total, cpu_seconds=time.process_time() - cpu, knn_seconds=t_knn, pieces_seconds=t_fit,
                   pairs_seconds=total - t_knn - t_fit,
                   peak_rss_mib=_rss_mib(), rss_before_mib=base, mean_group_size=float(pieces.sizes.float().mean()),
                   pairs=int(values.numel()))
        if approximate:  # recall of the approximate lists against exact search on 2,000 queries
            q = x[:2000]
            d2 = (q * q).sum(1, keepdim=True) + (x * x).sum(1) - 2 * q @ x.T
            d2[torch.arange(2000), torch.arange(2000)] = float("inf")
            exact = d2.topk(16, largest=False).indices
            out["knn_recall_at_16"] = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 16
                                                     for a, b in zip(nbr[:2000], exact, strict=True)]))
        if n <= 10_000:  # reference on 100 anchors, extrapolated to n
            sub = x.numpy()
            start = time.perf_counter()
            _reference_anchors(sub, cfg, 100)
            out["reference_seconds_extrapolated"] = (time.perf_counter() - start) * n / 100
    return out


def _reference_anchors(x: np.ndarray, cfg, anchors: int) -> None:
    """The reference's per-point work (distances, selection, PCA, 16 pair scores) for some anchors."""
    from plm.manifold.reference import _pca, reference_directed, reference_fit_error

    for i in range(anchors):
        d = ((x - x[i]) ** 2).sum(1)
        d[i] = np.inf
        cand = np.argsort(d, kind="stable")[:16]
        members = [i]
        for j in cand:
            trial = members + [int(j)]
            if len(trial) <= cfg.piece_dim + 1:
                err = 0.0
            else:
                err = reference_fit_error(x[trial], cfg.piece_dim, cfg.criterion)
            if err <= cfg.eps + 1e-6:
                members.append(int(j))
        mean, basis = _pca(x[members], cfg.piece_dim)
        for j in cand:
            reference_directed(x[j], x[i], mean, basis, cfg.n_alpha, cfg.n_beta)


def _training_steps(torch) -> dict:
    from plm.models import ModelConfig, create_model

    model = create_model(ModelConfig(backbone="efficientnet_lite0", embed_dim=128, image_size=64), pretrained=True)
    images = torch.randn(120, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def finetune() -> None:
        model.train()
        opt.zero_grad()
        emb = model(images)
        (emb @ emb.T).mean().backward()
        opt.step()

    head = model.head
    head_opt = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def frozen() -> None:
        model.eval()
        with torch.no_grad():
            feats = model.features(images)
        head_opt.zero_grad()
        emb = head(feats)
        (emb @ emb.T).mean().backward()
        head_opt.step()

    with torch.no_grad():
        cached = model.features(images)

    def head_only() -> None:
        head_opt.zero_grad()
        emb = head(cached)
        (emb @ emb.T).mean().backward()
        head_opt.step()

    finetune(), frozen(), head_only()  # warm-up
    cpu = time.process_time
    return {"finetune_seconds": _median_time(finetune, 5), "frozen_seconds": _median_time(frozen, 5),
            "head_only_seconds": _median_time(head_only, 20),
            "finetune_cpu_seconds": _median_time(finetune, 3, cpu), "frozen_cpu_seconds": _median_time(frozen, 3, cpu),
            "head_only_cpu_seconds": _median_time(head_only, 20, cpu), "peak_rss_mib": _rss_mib()}


def _report(n: int, threads: int) -> dict:
    """Time ``plm similarity-report`` on synthetic SOP-sized features in a child process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        feats, out = os.path.join(tmp, "f.npz"), os.path.join(tmp, "q.json")
        np.savez(feats, vectors=make_points(n, 512), labels=np.arange(n) // 5)
        cmd = [sys.executable, "-m", "plm", "similarity-report", "--dataset", "sop", "--features", feats, "--json", out]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if res.returncode != 0:
            return {"case": "report", "arg": str(n), "error": res.stderr.strip().splitlines()[-1]}
        with open(out) as fh:
            data = json.load(fh)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"case": "report", "arg": str(n), "seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024.0,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "table": res.stdout,
            "estimators": data["estimators"]}


def _subprocess(case: str, arg: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_manifold", "--one", case, arg, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        return {"case": case, "arg": arg, "error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    """Run the chosen cases and print one table per case."""
    parser = argparse.ArgumentParser(prog="bench_manifold", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000], help="dataset sizes N")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "ARG"), help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write all results as JSON")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.threads)))
        return 0
    load = os.getloadavg()[0]
    print(f"threads={args.threads}  load average at start: {load:.1f} on {os.cpu_count()} cores"
          + ("  (busy machine: timings inflated)" if load > 1.5 * args.threads else ""))
    results = []
    step = None
    if "step" in args.cases:
        step = _subprocess("step", "-", args.threads)
        results.append(step)
        if "error" not in step:
            print(f"\ntraining step, EfficientNet-Lite0, 120 images at 64 px: "
                  f"fine-tune {step['finetune_seconds']:.3f} s "
                  f"(CPU {step['finetune_cpu_seconds']:.3f} s), frozen backbone + head {step['frozen_seconds']:.3f} s "
                  f"(CPU {step['frozen_cpu_seconds']:.3f} s), head only {step['head_only_seconds'] * 1e3:.1f} ms "
                  f"(CPU {step['head_only_cpu_seconds'] * 1e3:.1f} ms)")
        else:
            print("step:", step["error"])
    if "batch" in args.cases:
        print(f"\n{'case':<22}{'PL s':>9}{'PL CPU s':>10}{'ref s':>9}{'ratio':>8}{'peak MiB':>10}{'max|Δ|':>10}"
              + ("  % finetune  % frozen  (CPU-time ratios)" if step and "error" not in step else ""))
        for arg in ("128", "512", "1024:16", "1024:all", "1024:group"):
            r = _subprocess("batch", arg, args.threads)
            results.append(r)
            name = "B=120 d=" + arg.replace(":group", " seed group").replace(":", " K_c=")
            if "error" in r:
                print(f"{name}: {r['error']}")
                continue
            line = (f"{name:<22}{r['seconds']:>9.4f}{r['cpu_seconds']:>10.4f}"
                    f"{r['reference_seconds']:>9.2f}{r['reference_seconds'] / r['seconds']:>7.0f}x"
                    f"{r['peak_rss_mib']:>10.0f}{r['max_abs_diff_vs_reference']:>10.1e}")
            if step and "error" not in step:
                line += (f"  {100 * r['seconds'] / step['finetune_seconds']:>9.1f}%"
                         f"  {100 * r['seconds'] / step['frozen_seconds']:>7.1f}%"
                         f"  ({100 * r['cpu_seconds'] / step['finetune_cpu_seconds']:.1f}%, "
                         f"{100 * r['cpu_seconds'] / step['frozen_cpu_seconds']:.1f}%)")
            print(line + f"  |S_i| {r['mean_group_size']:.1f}")
    if "dataset" in args.cases:
        print(f"\n{'case':<22}{'total s':>9}{'CPU s':>8}{'k-NN s':>9}{'pieces s':>10}{'pairs s':>9}"
              f"{'peak MiB':>10}  notes")
        for n in args.sizes:
            for arg in ([f"{n}:exact"] + ([f"{n}:ivf"] if n > 20_000 else [])):
                r = _subprocess("dataset", arg, args.threads)
                results.append(r)
                if "error" in r:
                    print(f"N={arg}: {r['error']}")
                    continue
                notes = f"|S_i| {r['mean_group_size']:.2f}"
                if "knn_recall_at_16" in r:
                    notes += f", k-NN recall@16 {r['knn_recall_at_16']:.3f}"
                if "reference_seconds_extrapolated" in r:
                    notes += (f", reference ≈ {r['reference_seconds_extrapolated']:.0f} s "
                              f"(extrapolated from 100 anchors, "
                              f"{r['reference_seconds_extrapolated'] / r['seconds']:.0f}x)")
                print(f"{'N=' + arg:<22}{r['seconds']:>9.1f}{r['cpu_seconds']:>8.1f}{r['knn_seconds']:>9.1f}"
                      f"{r['pieces_seconds']:>10.1f}{r['pairs_seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}  {notes}")
    if "report" in args.cases:
        r = _report(60_000, args.threads)
        results.append(r)
        if "error" in r:
            print("report:", r["error"])
        else:
            print(f"\nplm similarity-report, 60,000 x 512 (12,000 classes): {r['seconds']:.1f} s wall, "
                  f"{r['cpu_seconds']:.0f} CPU s (all child processes so far), peak {r['peak_rss_mib']:.0f} MiB "
                  f"(largest child process)")
            print(r["table"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
