"""``plm backbones``: the registered backbones, their input size and feature dimension, and their weights."""

from __future__ import annotations

import argparse

NAME = "backbones"
HELP = "list the registered backbones with input size, feature dimension and whether weights are available here"
EXAMPLE = "plm backbones --json backbones.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the list as JSON")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file that is not a plm backbones list")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from plm.models.catalog import backbone_catalog
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import BACKBONES_JSON, check_output_file
    from plm.utils.tables import format_table

    if args.json:
        check_output_file(args.json, "--json", kind=BACKBONES_JSON, force=args.force)
    rows = backbone_catalog()
    print(format_table(["backbone", "input px", "feature dim", "weights here", "note"],
                       [[b.name, b.input_size, b.feature_dim, "yes" if b.weights else "no", b.note] for b in rows]))
    if args.json:
        atomic_write_json([asdict(b) for b in rows], args.json)
    return 0
