"""``plm backbones``: the backbones by name, their input size and feature dimension, and their weights here."""

from __future__ import annotations

import argparse

NAME = "backbones"
HELP = "list the backbones (torchvision's, timm's) with input size, feature dimension and whether weights are here"
DESCRIPTION = (HELP + ". A backbone's published ImageNet weights are used from the standard cache (torch hub's "
               "checkpoints folder, the Hugging Face hub cache), or downloaded into it on first use when online; "
               "offline and not cached, pass --weights FILE. efficientnet_lite0's weights ship with plm.")
EXAMPLE = "plm backbones --timm 'convnext*' --json backbones.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timm", default=None, metavar="PATTERN",
                        help="also list timm's pretrained models matching PATTERN (e.g. 'vit_base*'), as timm:NAME "
                             "(needs timm: pip install 'plm[timm]')")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the list as JSON")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file that is not a plm backbones list")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from plm.errors import UserError
    from plm.models.catalog import backbone_catalog, timm_catalog, timm_version
    from plm.utils.io import atomic_write_json
    from plm.utils.paths import BACKBONES_JSON, check_output_file
    from plm.utils.tables import format_table

    if args.json:
        check_output_file(args.json, "--json", kind=BACKBONES_JSON, force=args.force)
    rows = backbone_catalog()
    if args.timm:
        try:
            found = timm_catalog(args.timm)
        except ValueError as err:
            raise UserError(str(err)) from err
        if not found:
            raise UserError(f"timm has no pretrained model matching {args.timm!r} (timm.list_models(pretrained=True))")
        rows += found
    print(format_table(["backbone", "input px", "feature dim", "weights here", "note"],
                       [[b.name, b.input_size, b.feature_dim, "yes" if b.weights else "no", b.note] for b in rows],
                       left=(0, 4)))
    version = timm_version()
    print(f"timm {version} is installed: any timm model works as --backbone timm:NAME (--timm PATTERN lists them)"
          if version else "timm is not installed: pip install 'plm[timm]' for timm's models as --backbone timm:NAME")
    if args.json:
        atomic_write_json([asdict(b) for b in rows], args.json)
    return 0
