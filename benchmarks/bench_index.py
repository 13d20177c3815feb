"""Index and search at scale: exact flat vs IVF vs re-ranked PQ fast-scan vs HNSW on random vectors.

    python -m benchmarks.bench_index                 # 1,000,000 × 128-d, about 10 minutes on 2 cores
    python -m benchmarks.bench_index --n 100000      # a quicker look
    python -m benchmarks index                       # the same as the first line

Vectors are i.i.d. Gaussian, L2-normalised (plm embeddings are unit vectors; the metric is cosine),
the hardest case for graph and cell indexes: no cluster structure to exploit, and the 10th
neighbour is barely closer than the 1,000th. Queries are fresh random unit vectors. Every index is
built through ``plm.search.VectorIndex`` (what ``plm index`` builds). For each: build time, then
per search setting the query throughput (all queries in one batch, on ``--threads`` threads) and
recall@10 against the exact top-10 of the flat index.

Throughput is wall-clock queries/s, plus queries per CPU-second (process CPU time). On a shared,
busy machine the wall figure drops with the load; with ``--threads 1`` the CPU figure does not
(no OpenMP threads spin-waiting), and twice it estimates the throughput of 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Optional

import numpy as np

TARGET_RECALL, TARGET_QPS = 0.95, 1000.0


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found[:, :k], truth, strict=True)]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(n: int, dim: int, queries: int, seed: int, intrinsic: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` database and ``queries`` query vectors: random unit vectors, float32.

    With ``intrinsic > 0`` the vectors lie near an ``intrinsic``-dimensional subspace (a Gaussian
    latent mapped by a random orthonormal matrix, plus 10% isotropic noise), like real embeddings.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32) if intrinsic else None

    def draw(m: int) -> np.ndarray:
        if basis is None:
            return _unit(rng.standard_normal((m, dim), dtype=np.float32))
        z = rng.standard_normal((m, intrinsic), dtype=np.float32) @ basis
        return _unit(z + 0.1 * np.sqrt(intrinsic / dim) * rng.standard_normal((m, dim), dtype=np.float32))

    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in chunks: no float64 copy of the whole set
        x[s:s + 100_000] = draw(min(100_000, n - s))
    return x, draw(queries)


def _sweep(name: str, build_s: float, index: Any, values: list, q: np.ndarray, truth: np.ndarray, k: int,
           rows: list, stop_at: float = 0.995) -> None:
    """Search with each setting of the index's knob (stopping once recall reaches ``stop_at``)."""
    for v in values:
        if index.search_param is not None:
            index.set_search_param(v)
        start, cpu = time.perf_counter(), time.process_time()
        _, ids = index.search(q, k)
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu
        row = {"index": name, "build_s": round(build_s, 1), "param": index.search_param or "-",
               "value": v if index.search_param else "-", "recall": round(_recall(ids, truth), 4),
               "qps": round(len(q) / secs), "cpu_qps": round(len(q) / max(cpu, 1e-9)),
               "load": round(os.getloadavg()[0], 1)}
        rows.append(row)
        meets = row["recall"] >= TARGET_RECALL and row["qps"] >= TARGET_QPS
        print(f"  {name:<24} {row['param']}={row['value']!s:<5} recall@{k}={row['recall']:.4f} {row['qps']:>7} q/s"
              f" ({row['cpu_qps']} per CPU-second)" + ("  <- meets the target" if meets else ""), flush=True)
        if row["recall"] >= stop_at:
            break


def _build(name: str, vectors: np.ndarray, kind: str, **params: Any) -> tuple[Any, float]:
    from plm.search import VectorIndex

    start = time.perf_counter()
    index = VectorIndex.build(vectors, kind, "cosine", **params)
    secs = time.perf_counter() - start
    print(f"  {name:<24} built in {secs:.1f} s", flush=True)
    return index, secs


def run(n: int, dim: int, nq: int, k: int, seed: int, hnsw: list[tuple[int, int]], ef_search: list[int],
        nlist: int, nprobe: list[int], pq_m: int, k_factors: list[int], intrinsic: int = 0) -> list[dict[str, Any]]:
    """Build and measure every index through :class:`plm.search.VectorIndex` (what ``plm index`` builds).

    Returns one row per (index, search setting).
    """
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    x, q = make_data(n, dim, nq, seed, intrinsic)
    kind = f"near a {intrinsic}-d subspace" if intrinsic else "i.i.d. random"
    print(f"data: {n:,} × {dim}-d unit vectors, {kind}; {nq} queries, k={k} ({time.perf_counter() - t0:.1f} s)",
          flush=True)

    exact, secs = _build("exact (faiss flat, IP)", x, "exact")
    start, cpu = time.perf_counter(), time.process_time()
    _, truth = exact.search(q, k)
    qps, cpu_qps = round(nq / (time.perf_counter() - start)), round(nq / max(time.process_time() - cpu, 1e-9))
    rows.append({"index": "exact (flat)", "build_s": round(secs, 1), "param": "-", "value": "-", "recall": 1.0,
                 "qps": qps, "cpu_qps": cpu_qps, "load": round(os.getloadavg()[0], 1)})
    print(f"  {'exact (flat)':<24} {qps} q/s ({cpu_qps} per CPU-second; the ground truth)", flush=True)
    del exact

    if nlist:
        index, secs = _build(f"IVF{nlist},Flat", x, "ivf", nlist=nlist)
        _sweep(f"IVF{nlist},Flat", secs, index, nprobe, q, truth, k, rows)
        del index
    if pq_m:
        name = f"PQ{pq_m}x4fs + re-rank"
        index, secs = _build(name, x, "pq", pq_m=pq_m)
        _sweep(name, secs, index, k_factors, q, truth, k, rows)
        del index
    for m, efc in hnsw:
        name = f"HNSW{m},efC={efc}"
        index, secs = _build(name, x, "hnsw", M=m, ef_construction=efc)
        _sweep(name, secs, index, ef_search, q, truth, k, rows)
        del index
    return rows


def table(rows: list[dict[str, Any]], k: int) -> str:
    """The rows as a Markdown table."""
    out = [f"| index | build (s) | search setting | recall@{k} | queries/s | queries per CPU-s | load avg |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        setting = "-" if r["param"] == "-" else f"{r['param']}={r['value']}"
        out.append(f"| {r['index']} | {r['build_s']} | {setting} | {r['recall']:.4f} | {r['qps']:,} | "
                   f"{r['cpu_qps']:,} | {r['load']} |")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; ``argv`` as on the command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_index", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--intrinsic-dim", type=int, default=0,
                   help="0: i.i.d. random vectors (hardest); "
                        "D > 0: vectors near a D-dim subspace, like real embeddings")
    p.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    p.add_argument("--hnsw", nargs="*", default=["32,40"], help="HNSW builds as M,efConstruction")
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 192, 256, 512, 1024])
    p.add_argument("--nlist", type=int, default=1024, help="IVF cells (0: skip IVF)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 128, 256])
    p.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantizers (0: skip PQ)")
    p.add_argument("--k-factor", type=int, nargs="+", default=[10, 20, 40, 80])
    p.add_argument("--json", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    hnsw = [tuple(int(v) for v in s.split(",")) for s in args.hnsw]
    rows = run(args.n, args.dim, args.queries, args.k, args.seed, hnsw, args.ef_search, args.nlist, args.nprobe,
               args.pq_m, args.k_factor, args.intrinsic_dim)
    load = os.getloadavg()[0]
    print(f"\n{table(rows, args.k)}\n\ntarget: recall@{args.k} >= {TARGET_RECALL} at >= {TARGET_QPS:.0f} q/s; "
          f"faiss {faiss.__version__}, {args.threads} threads, load average {load:.1f} at the end, "
          f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "load_average": load, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
