"""``plm similarity-report``: how well each estimator's similarity matches the labels (purity, correlation)."""

from __future__ import annotations

import argparse

from plm.commands._common import DEFAULT_BACKBONE, add_dataset_arguments, add_runtime_arguments
from plm.utils.args import positive_int, seed_int
from plm.utils.choices import CONTEXT_MODES, CRITERIA, ON_BREACH, SYMMETRIZE
from plm.utils.tables import format_table

NAME = "similarity-report"
HELP = "label purity and correlation of the PL manifold similarity and its peers on a dataset split"
DESCRIPTION = (HELP + ". Embeds the split with a frozen backbone (or a checkpoint), runs every estimator on the "
               "embeddings and prints one row per estimator. Labels are used only for scoring.")
EXAMPLE = "plm similarity-report --dataset folder --data-root photos/ --split all --backbone efficientnet_lite0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from plm.estimators import DEFAULT_ESTIMATORS, ESTIMATORS

    add_dataset_arguments(parser, default_split="train")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--backbone", help=f"pretrained backbone (pooled features, L2-normalised; default "
                                          f"{DEFAULT_BACKBONE})")
    group.add_argument("--checkpoint", help="a plm checkpoint (plm train output)")
    group.add_argument("--features", metavar="NPZ",
                       help="precomputed features: an .npz with 'vectors' (N, d) and 'labels' (N,)")
    parser.add_argument("--weights", default=None,
                        metavar="FILE", help="a local weights file for the backbone, instead of its published ones")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="input resolution (default: the model's own)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    add_runtime_arguments(parser)
    parser.add_argument("--estimators", nargs="+", default=list(DEFAULT_ESTIMATORS), metavar="NAME",
                        help=f"estimators to run ({', '.join(ESTIMATORS.names())})")
    parser.add_argument("--clusters", type=positive_int, default=None,
                        help="clusters for kmeans / hierarchical (default: the number of classes)")
    parser.add_argument("--piece-dim", type=int, default=None, help="PL piece dimension m")
    parser.add_argument("--eps", type=float, default=None, help="PL subset-selection threshold ε")
    parser.add_argument("--criterion", default=None,
                        choices=list(CRITERIA),
                        help="PL subset-selection criterion")
    parser.add_argument("--candidates", type=int, default=None, help="PL candidates per anchor K_c")
    parser.add_argument("--n-alpha", type=float, default=None, help="PL exponent N_α")
    parser.add_argument("--n-beta", type=float, default=None, help="PL exponent N_β")
    parser.add_argument("--symmetrize", default=None, choices=list(SYMMETRIZE),
                        help="PL symmetrisation")
    parser.add_argument("--on-breach", default=None, choices=list(ON_BREACH),
                        help="PL subset selection at a rejected candidate: skip it, or stop growing")
    parser.add_argument("--no-subset-selection", action="store_true", help="PL ablation: no subset selection")
    parser.add_argument("--seed-groups", action="store_true",
                        help="PL candidates from the anchor's seed group of --batch-k (--regime batch only; "
                             "plm train's glyph default)")
    parser.add_argument("--expansion", type=int, default=None, metavar="K",
                        help="PL neighbourhood expansion: each point's similarities averaged over its K nearest "
                             "points, itself included (plm train's loss.expansion; dense mode only)")
    parser.add_argument("--context", type=float, default=None, metavar="C",
                        help="STML's contextual similarity in the PL similarity at weight C, as plm train's "
                             "loss.context applies it to its target (training's default 0.25; dense mode only)")
    parser.add_argument("--context-mode", default="raise", choices=list(CONTEXT_MODES),
                        help="with --context: raise (a pair only rises towards the contextual similarity, "
                             "training's default) or mix")
    parser.add_argument("--dense-max", type=int, default=5000,
                        help="largest N for dense N x N similarities; above it, sparse top-k (hierarchical is skipped)")
    parser.add_argument("--exact-pairs", type=int, default=20_000_000,
                        help="largest number of pairs scored exactly; above it, stratified pair sampling")
    parser.add_argument("--approximate-knn", action="store_true",
                        help="approximate shared k-NN table (faiss IVF) instead of exact blockwise search")
    parser.add_argument("--regime", choices=["split", "batch"], default="split",
                        help="split: every estimator on the whole split; batch: on neighbourhood-sampled batches "
                             "as the trainer builds them (rank measures averaged over --batches batches)")
    parser.add_argument("--batches", type=int, default=50, help="batches averaged in --regime batch")
    parser.add_argument("--reference", default=None, metavar="NAME",
                        help="--regime batch: the estimator the others are compared with, batch by batch "
                             "(default: plm when it is run, else the first)")
    parser.add_argument("--batch-k", type=int, default=5,
                        help="group size (a seed and its k-1 neighbours) in --regime batch")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of k-means and the pair sample")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file that is not plm's report")


def _pl_config(args: argparse.Namespace):
    from plm.errors import UserError
    from plm.manifold import ManifoldConfig

    changes = {key: value for key, value in (
        ("piece_dim", args.piece_dim), ("eps", args.eps), ("criterion", args.criterion),
        ("max_candidates", args.candidates), ("n_alpha", args.n_alpha), ("n_beta", args.n_beta),
        ("symmetrize", args.symmetrize), ("on_breach", args.on_breach)) if value is not None}
    if args.no_subset_selection:
        changes["subset_selection"] = False
    if args.seed_groups:
        if args.regime != "batch":
            raise UserError("--seed-groups needs --regime batch: only neighbourhood-sampled batches have seed groups")
        if args.batch_k < 2:
            raise UserError(f"--seed-groups needs --batch-k >= 2, got {args.batch_k}")
        changes["group_size"] = args.batch_k
    return ManifoldConfig(**changes)


def _load_features(args: argparse.Namespace):
    import numpy as np

    from plm.errors import UserError

    if args.features:
        try:
            with np.load(args.features, allow_pickle=False) as z:
                vectors, labels = z["vectors"], z["labels"]
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot read features from {args.features}: {err} "
                            f"(expected an .npz with 'vectors' and 'labels')") from err
        if args.limit is not None and args.limit < len(vectors):
            idx = np.sort(np.random.default_rng(0).choice(len(vectors), size=args.limit, replace=False))
            vectors, labels = vectors[idx], labels[idx]
        return vectors, labels, args.features
    from plm.commands._common import embed_labelled_split

    _, emb = embed_labelled_split(args, "similarity-report's scores (purity, correlation)")
    return emb.vectors, emb.labels, args.backbone or args.checkpoint


def run(args: argparse.Namespace) -> int:
    from plm.errors import UserError
    from plm.estimators import ESTIMATORS
    from plm.estimators.report import similarity_quality
    from plm.utils.io import atomic_write_json

    unknown = [e for e in args.estimators if e not in ESTIMATORS]
    if unknown:
        raise UserError(f"unknown estimator(s) {', '.join(unknown)}; choose from {', '.join(ESTIMATORS.names())}")
    config = _pl_config(args)
    if args.json:
        from plm.utils.paths import SIMILARITY_JSON, check_output_file

        check_output_file(args.json, "--json", [args.checkpoint, args.weights, args.features, args.data_root],
                          SIMILARITY_JSON, args.force)
    vectors, labels, source = _load_features(args)
    if len(vectors) < 3:
        raise UserError(f"need at least 3 items, got {len(vectors)}")
    options: dict[str, dict] = {name: {"dense_max": args.dense_max} for name in args.estimators}
    if "plm" in options:
        options["plm"]["config"] = config
        options["plm"]["top_k"] = max(16, config.max_candidates or 16)
        if args.expansion is not None:
            if args.expansion < 0:
                raise UserError(f"--expansion must be 0 or more, got {args.expansion}")
            if args.regime == "split" and len(vectors) > args.dense_max:
                raise UserError(f"--expansion needs dense similarities: {len(vectors)} points is above --dense-max "
                                f"{args.dense_max} (raise it, or use --regime batch)")
            options["plm"]["expansion"] = args.expansion
        if args.context is not None:
            if not 0 <= args.context <= 1:
                raise UserError(f"--context is a weight in [0, 1], got {args.context}")
            if args.regime == "split" and len(vectors) > args.dense_max:
                raise UserError(f"--context needs dense similarities: {len(vectors)} points is above --dense-max "
                                f"{args.dense_max} (raise it, or use --regime batch)")
            options["plm"].update(context=args.context, context_mode=args.context_mode)
    for name in ("kmeans", "hierarchical"):
        if name in options and args.clusters is not None:
            options[name]["n_clusters"] = args.clusters
    if "kmeans" in options:
        options["kmeans"]["seed"] = args.seed
    if args.regime == "batch":
        return _run_batch(args, vectors, labels, source, options, config)
    result = similarity_quality(vectors, labels, args.estimators, options=options, exact_max_pairs=args.exact_pairs,
                                seed=args.seed, approximate_knn=args.approximate_knn, progress=not args.quiet)
    rows = []
    for name, r in result["estimators"].items():
        if "skipped" in r:
            print(f"note: {name} skipped: {r['skipped']}")
        rows.append([name, r.get("auc"), r.get("ap"), r.get("knn_auc"), r.get("knn_ap"), r["purity"],
                     r.get("knn_purity_same_size"), r["correlation"], r.get("knn_correlation"),
                     r.get("mean_group_size"), r.get("mode", "skipped"), r.get("seconds")])
    print(f"{args.dataset} / {args.split}: {result['num_points']} points, {result['num_classes']} classes, "
          f"features from {source}; correlation over pairs: {result['correlation_method']}; "
          f"shared k-NN table {result['knn_seconds']:.1f} s")
    print(format_table(["estimator", "AUC", "AP", "k-NN AUC", "k-NN AP", "purity", "k-NN purity", "correlation",
                        "k-NN corr", "group size", "mode", "seconds"], rows))
    print("k-NN purity: plain nearest-neighbour groups of the estimator's group sizes (purity falls with size)")
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "num_points": result["num_points"],
                           "num_classes": result["num_classes"], "correlation_method": result["correlation_method"],
                           "knn_seconds": result["knn_seconds"], "knn_cpu_seconds": result["knn_cpu_seconds"],
                           "plm_config": config.to_dict(), **_pl_target_json(args),
                           "estimators": result["estimators"]}, args.json)
    return 0


def _run_batch(args: argparse.Namespace, vectors, labels, source: str, options: dict, config) -> int:
    from plm.errors import UserError
    from plm.estimators.report import batch_quality
    from plm.utils.io import atomic_write_json

    if args.batches < 1 or args.batch_k < 1:
        raise UserError(f"--batches and --batch-k must be positive, got {args.batches} and {args.batch_k}")
    batch_size = 120 - 120 % args.batch_k
    if args.reference is not None and args.reference not in args.estimators:
        raise UserError(f"--reference {args.reference} is not among --estimators {' '.join(args.estimators)}")
    result = batch_quality(vectors, labels, args.estimators, options=options, batch_size=batch_size, k=args.batch_k,
                           num_batches=args.batches, seed=args.seed, progress=not args.quiet,
                           reference=args.reference)
    print(f"{args.dataset} / {args.split}: {result['num_points']} points, features from {source}; "
          f"{result['num_batches']} neighbourhood batches of {batch_size} (k = {args.batch_k})")
    ref = result["reference"]
    rows = [[name, r["auc"], r["auc_std"], r["ap"], r["ap_std"], r["auc_diff"], r["auc_diff_se"], r["ap_diff"],
             r["ap_diff_se"], r["top1"], r["purity"], r["mean_group_size"], r["batches"]]
            for name, r in result["estimators"].items()]
    print(format_table(["estimator", "batch AUC", "± std", "batch AP", "± std", f"AUC − {ref}", "± se", f"AP − {ref}",
                        "± se", "top-1", "purity", "group size", "batches"], rows))
    print("top-1: the share of points whose most similar other point in the batch has their class")
    if args.json:
        atomic_write_json({"dataset": args.dataset, "split": args.split, "plm_config": config.to_dict(),
                           **_pl_target_json(args), **result}, args.json)
    return 0


def _pl_target_json(args: argparse.Namespace) -> dict:
    """The options that make the PL row training's target (``null`` where not given)."""
    mode = args.context_mode if args.context is not None else None
    return {"expansion": args.expansion, "context": args.context, "context_mode": mode}
