"""Evaluation at SOP scale: Recall@{1,10,100,1000} + MAP@R + R-precision on 60,502 × 512-d.

Compares, in one run, plm's exact blocked scan with pytorch-metric-learning's AccuracyCalculator
(faiss IndexFlatL2 k-NN underneath) on the same synthetic embeddings: 11,316 classes of 2-12
items (SOP's test split: 60,502 images, mean 5.3 per class), class centres plus noise, L2-normalised.
Each variant runs in its own subprocess, so its wall time and peak resident memory
(``ru_maxrss``, which sees torch's and faiss's native allocations) are its own.

    python -m benchmarks.bench_eval                 # full size
    python -m benchmarks.bench_eval --n 8000        # quick look
    python -m benchmarks.bench_eval --variants plm  # only some variants
    python -m benchmarks.bench_eval --variants plm --threads 2 1 --busy both   # idle and with one core busy

``--busy yes`` holds one core with a spinning process (started and stopped by the benchmark) while
each variant runs; ``--busy both`` runs every variant idle and busy and adds the busy / idle ratio.
``--wait-policy`` sets OpenMP's ``OMP_WAIT_POLICY`` of the variants' processes (``default``: unset).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._load import busy_core

KS = (1, 10, 100, 1000)
SOP_TEST_IMAGES, SOP_TEST_CLASSES = 60_502, 11_316

VARIANTS = {
    "plm": "plm retrieval_metrics (exact symmetric scan, torch)",
    "plm-rows": "plm retrieval_metrics(symmetric=False) (row-block scan)",
    "plm-faiss": "plm retrieval_metrics(use_faiss=True) (faiss k-NN, k=1000)",
    "pml-k1000": "pml AccuracyCalculator, k=1000 (the k-NN Recall@1000 needs)",
    "pml-maxbin": "pml AccuracyCalculator, k=max_bin_count (P@1, MAP@R, R-prec only)",
}


def make_data(n: int, n_classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic labelled embeddings with SOP's class-size profile (2-12 per class)."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(2 + rng.poisson(max(n / n_classes - 2.0, 0.0), n_classes), 2, 12)
    while sizes.sum() != n:  # adjust to the exact total, staying within [2, 12]
        diff = n - int(sizes.sum())
        i = rng.integers(0, n_classes, size=abs(diff))
        sizes[i] = np.clip(sizes[i] + np.sign(diff), 2, 12)
    labels = np.repeat(np.arange(n_classes), sizes)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    x = centres[labels] + 2.2 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), labels[perm]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_variant(name: str, data: str, threads: int) -> dict:
    """Run one variant in this process; returns timings, memory and metrics."""
    import torch

    with np.load(data) as z:
        x, labels = z["x"], z["labels"]
    torch.set_num_threads(threads)
    if name.startswith("pml"):
        from pytorch_metric_learning.utils import common_functions as c_f
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        c_f.LOGGER.setLevel("WARNING")
        k = 1000 if name == "pml-k1000" else "max_bin_count"
        calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k=k)
        xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
        base = _maxrss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        out = calc.get_accuracy(xt, lt)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        metrics = {"recall_at": {"1": out["precision_at_1"]}, "map_at_r": out["mean_average_precision_at_r"],
                   "r_precision": out["r_precision"]}
    else:
        from plm.evaluation import retrieval_metrics

        retrieval_metrics(x[:64], labels[:64], ks=(1,), with_nmi=False)  # load libraries outside the timing
        base = _maxrss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = retrieval_metrics(x, labels, ks=KS, with_nmi=False, use_faiss=name == "plm-faiss",
                                    symmetric=name != "plm-rows")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"variant": name, "threads": threads, "seconds": seconds, "cpu_seconds": cpu,
            "peak_rss_mib": _maxrss_mib(), "rss_before_mib": base, "metrics": metrics}


def _run_child(name: str, data: str, threads: int, busy: bool, policy: str) -> dict | None:
    """One variant in its own process (idle, or with one core held by a spinning process)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(threads))  # torch and faiss alike
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    with busy_core(busy):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_eval", "--_child", name, data, str(threads)],
                              capture_output=True, text=True, env=env, cwd=root)
        load = os.getloadavg()[0]
    if proc.returncode != 0:
        print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(load_avg_after=load, busy=busy, wait_policy=policy)
    return res


def main(argv: list[str] | None = None) -> int:
    """Generate the data, run each variant in a subprocess, print a table and a JSON summary."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_eval", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=SOP_TEST_IMAGES, help="number of embeddings")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: SOP's ratio)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--variants", nargs="+", default=["plm", "plm-rows", "pml-k1000", "pml-maxbin"],
                   choices=list(VARIANTS))
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to run each variant with")
    p.add_argument("--busy", choices=("no", "yes", "both"), default="no",
                   help="hold one core with a spinning process while the variants run (both: idle, then busy)")
    p.add_argument("--wait-policy", nargs="+", choices=("default", "active", "passive"), default=["default"],
                   help="OMP_WAIT_POLICY of the variants' processes (default: unset)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_child", nargs=3, metavar=("VARIANT", "DATA", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(run_variant(args._child[0], args._child[1], int(args._child[2]))))
        return 0
    classes = args.classes or max(1, round(args.n * SOP_TEST_CLASSES / SOP_TEST_IMAGES))
    x, labels = make_data(args.n, classes, args.dim)
    print(f"{args.n} embeddings × {args.dim}-d, {classes} classes (sizes {np.bincount(labels).min()}-"
          f"{np.bincount(labels).max()}), Recall@{'/'.join(map(str, KS))} + MAP@R + R-precision; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        np.savez(data, x=x, labels=labels)
        del x
        busy_cases = {"no": [False], "yes": [True], "both": [False, True]}[args.busy]
        for busy in busy_cases:
            for policy in args.wait_policy:
                for threads in args.threads:
                    for name in args.variants:
                        res = _run_child(name, data, threads, busy, policy)
                        if res is None:
                            continue
                        results.append(res)
                        m = res["metrics"]
                        print(f"  {name:11s} {threads} thr {'busy' if busy else 'idle'} wait {policy:8s} "
                              f"{res['seconds']:7.1f} s  peak {res['peak_rss_mib'] / 1024:5.2f} GiB  "
                              f"R@1 {m['recall_at']['1']:.4f}  MAP@R {m['map_at_r']:.4f}  "
                              f"R-prec {m['r_precision']:.4f}  (load avg {res['load_avg_after']:.2f})", flush=True)
    print("\n| variant | threads | cores | OMP wait | wall time (s) | vs plm | vs idle 2 threads | CPU time (s) "
          "| peak RSS (GiB) | R@1 | R@10 | R@100 | R@1000 | MAP@R | R-prec |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        same = [q for q in results if q["busy"] == r["busy"] and q["wait_policy"] == r["wait_policy"]]
        ref = next((q for q in same if q["variant"] == "plm" and q["threads"] == r["threads"]), None)
        idle = next((q for q in results if q["variant"] == r["variant"] and not q["busy"] and q["threads"] == 2
                     and q["wait_policy"] == "default"), None)
        ratio = f"{r['seconds'] / ref['seconds']:.2f}×" if ref else "–"
        vs_idle = f"{r['seconds'] / idle['seconds']:.2f}×" if idle else "–"
        m = r["metrics"]
        rk = [f"{m['recall_at'][k]:.4f}" if k in m["recall_at"] else "–" for k in map(str, KS)]
        print(f"| {VARIANTS[r['variant']]} | {r['threads']} | {'one busy' if r['busy'] else 'idle'} | "
              f"{r['wait_policy']} | {r['seconds']:.1f} | {ratio} | {vs_idle} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_mib'] / 1024:.2f} | {' | '.join(rk)} | {m['map_at_r']:.4f} | {m['r_precision']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
