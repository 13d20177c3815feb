"""``plm demo``: the offline end-to-end demo (train without labels, retrieve unseen classes)."""

from __future__ import annotations

import argparse

from plm.utils.args import positive_int, seed_int
from plm.utils.choices import AMP_MODES, DEMO_DATASETS, DEVICES

NAME = "demo"
HELP = "offline demo: unsupervised training on Latin glyphs, zero-shot retrieval of Greek and Cyrillic ones"
DESCRIPTION = (
    "Trains on the glyph benchmark's Latin classes with labels hidden (frozen EfficientNet-Lite0 features at "
    "64 px) and compares zero-shot retrieval of the unseen Greek and Cyrillic classes against the pretrained "
    "features and the peer methods (--dataset fashion-mnist: classes 0-4 seen, 5-9 unseen). Writes "
    "results.json and a self-contained report.html to --out. Falls back to Fashion-MNIST, then to "
    "scikit-learn digits, when the fonts (or files) are missing."
)
EXAMPLE = "plm demo --quick --out plm-demo --device auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from plm.demo import PRESETS, VARIANTS

    parser.add_argument("--out", default="plm-demo", help="output folder")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="preset", action="store_const", const="quick",
                       help="pretrained features and PLM only")
    speed.add_argument("--full", dest="preset", action="store_const", const="full",
                       help="also the ablations (no proxies, no subset selection, binary similarity), "
                            "on every training image")
    parser.set_defaults(preset="standard")
    parser.add_argument("--methods", nargs="+", choices=list(VARIANTS), default=None,
                        help="train exactly these (overrides --quick/--full)")
    parser.add_argument("--seeds", nargs="+", type=seed_int, default=[0],
                        help="one run per seed; metrics are averaged")
    parser.add_argument("--dataset", default="glyphs", choices=list(DEMO_DATASETS),
                        help="the demo's data (default glyphs)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"training epochs (glyphs: {PRESETS['standard']['glyph_epochs']}, or "
                             f"{PRESETS['full']['glyph_epochs']} with --full; Fashion-MNIST: "
                             f"{PRESETS['standard']['epochs']}, or {PRESETS['full']['epochs']})")
    parser.add_argument("--data-root", default=None,
                        help="a folder of font files (glyphs) or of the Fashion-MNIST IDX files")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("--device", default=None, choices=list(DEVICES),
                        help="where training runs (same as the override device=...; default auto)")
    parser.add_argument("--amp", nargs="?", const="auto", default=None, choices=list(AMP_MODES),
                        help="mixed precision of the training forward passes (same as amp=...; default off)")
    parser.add_argument("--force", action="store_true",
                        help="replace a results.json / report.html in --out that plm did not write")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training-config overrides for every run")


def run(args: argparse.Namespace) -> int:
    from plm.demo import run_demo
    from plm.utils.tables import format_table, metrics_headers, metrics_row

    overrides = list(args.overrides)
    if args.device:
        from plm.utils.device import resolve_device

        resolve_device(args.device)  # a clear error before any work when cuda is absent
        overrides.append(f"device={args.device}")
    if args.amp:
        overrides.append(f"amp={args.amp}")
    demo = run_demo(args.out, preset=args.preset, methods=args.methods, seeds=args.seeds, epochs=args.epochs,
                    data_root=args.data_root, overrides=overrides, report=not args.no_report,
                    progress=not args.quiet, dataset=args.dataset,
                    force=args.force)
    ks = list(next(iter(demo.methods.values()))["recall_at"])
    seeds = "" if len(args.seeds) == 1 else f" (mean of {len(args.seeds)} seeds)"
    print(f"\n{demo.dataset}: zero-shot retrieval on the unseen classes{seeds}")
    print(format_table(metrics_headers(ks), [metrics_row(n, m, ks) for n, m in demo.methods.items()]))
    written = ["results.json"] + ([] if args.no_report else ["report.html"])
    print(f"\n{demo.seconds:.0f} s; wrote {', '.join(str(demo.out_dir / w) for w in written)}")
    return 0
