"""``plm export``: embeddings to CSV / Parquet, an index to a plain faiss file, weights to safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "write what plm made in standard formats: embeddings as CSV/Parquet, an index as faiss, weights as safetensors"
DESCRIPTION = """Export a plm file for other tools. The input decides what is written, --out's extension (or
--format) how:

  embeddings (.npz from plm embed)  ->  .csv (path,label,embedding_0..) or .parquet (path, label, embedding)
  index (.npz from plm index)       ->  .faiss (faiss.read_index) + NAME.ids.json (paths[i] = id i)
  checkpoint (best.pt / last.pt)    ->  .safetensors (the model's weights) + NAME.json (its config)

Rows whose vector is NaN, infinite or all zeros are left out and counted. In CSV a text cell that a
spreadsheet would run as a formula (starting with =, +, -, @, a tab or a carriage return) gets a
leading '. Existing files are replaced only when plm exported them (--force: any file but an input).
Parquet needs pyarrow (pip install 'plm[parquet]'); faiss needs faiss-cpu. Formats: docs/search.md."""
EXAMPLE = """plm export photos.npz --out photos.parquet
  plm export photos-index.npz --out photos.faiss
  plm export runs/photos/best.pt --out photos-model.safetensors"""
FORMATS = {".csv": "csv", ".parquet": "parquet", ".faiss": "faiss", ".index": "faiss", ".safetensors": "safetensors"}
INPUT_KINDS = {"plm-embeddings": ("csv", "parquet"), "plm-index": ("faiss",), "checkpoint": ("safetensors",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an embeddings file (plm embed), an index file (plm index) or a checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="file to write; its extension picks the format "
                                                     "(.csv, .parquet, .faiss, .safetensors)")
    parser.add_argument("--format", default=None, choices=sorted(set(FORMATS.values())),
                        help="the output format when --out has another extension")
    parser.add_argument("--force", action="store_true",
                        help="replace existing output files (--out and its side file) that plm did not export")


def _input_kind(path: Path) -> str:
    from plm.errors import UserError
    from plm.utils.paths import npz_format

    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix in (".pt", ".pth"):
        return "checkpoint"
    fmt = npz_format(path)
    if fmt not in INPUT_KINDS:
        raise UserError(f"{path} is neither a plm embeddings file, a plm index file nor a checkpoint (.pt); "
                        f"make one with plm embed, plm index or plm train")
    return fmt


def run(args: argparse.Namespace) -> int:
    import logging

    from plm.errors import UserError
    from plm.search import EmbeddingStore, SearchIndex
    from plm.search import export as ex
    from plm.utils.paths import check_output_file

    src, out = Path(args.input), Path(args.out)
    kind = _input_kind(src)
    fmt = args.format or FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the format from --out {out}: use .csv, .parquet, .faiss or .safetensors, "
                        f"or pass --format")
    if fmt not in INPUT_KINDS[kind]:
        what = {"plm-embeddings": "an embeddings", "plm-index": "an index", "checkpoint": "a checkpoint"}[kind]
        raise UserError(f"{src} is {what} file, which exports to {' or '.join(INPUT_KINDS[kind])}, "
                        f"not {fmt}")
    written = ex.outputs(fmt, out)
    for what, path, file_kind in written:  # every file, side files included, before any work
        check_output_file(path, what, [src], file_kind, args.force, others=[(w, p) for w, p, _ in written if w != what],
                          side_of="--out", known_suffixes_only=args.format is not None)
    if fmt in ("csv", "parquet"):
        store = EmbeddingStore.load(src)
        if store.bad_rows().all():
            raise UserError(f"{src} holds no vector that can be exported (all are NaN, infinite or all zeros); "
                            f"re-run plm embed with the same --out to recompute them")
        report = (ex.write_embeddings_csv if fmt == "csv" else ex.write_embeddings_parquet)(store, out)
        for note in report.notes():
            logging.getLogger(__name__).warning("%s: %s", out, note)
        print(f"{out}: {report.rows} embeddings ({store.dim}-d) as {fmt}")
    elif fmt == "faiss":
        idx = SearchIndex.load(src)
        index_path, ids_path = ex.write_faiss(idx, out)
        print(f"{index_path}: faiss {idx.index.kind} index of {idx.index.count} vectors ({idx.index.metric}); "
              f"ids in {ids_path}")
    else:
        weights, config = ex.write_safetensors(src, out)
        print(f"{weights}: model weights as safetensors; config in {config}")
    return 0
