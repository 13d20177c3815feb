"""Query images for ``plm search``: files and folders given on the command line."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from plm.data.base import ImageDataset, ImageLoadError, open_image
from plm.errors import UserError

log = logging.getLogger(__name__)


class PathListDataset(ImageDataset):
    """Image files given by path (anywhere on disk), unlabelled; ids are the paths as given."""

    name, split = "queries", "all"

    def __init__(self, paths: Sequence[str | os.PathLike]):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        self.ids = [str(p) for p in paths]
        self.labels = np.full(len(self.paths), -1, dtype=np.int64)

    def load_image(self, index: int) -> Image.Image:
        return open_image(self.paths[index])


def collect_queries(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand query arguments: a file is one query, a folder every image under it (recursive).

    Returns:
        the query paths, and the folder entries skipped because they cannot be decoded.

    Raises:
        UserError: a query path is missing, a file query is not a readable image, or no query is left.
    """
    from plm.data.folder import list_images

    queries: list[str] = []
    skipped: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            for rel in list_images(path):
                full = str(path / rel)
                if readable(full) is None:
                    queries.append(full)
                else:
                    skipped.append(full)
        elif path.is_file():
            why = readable(item)
            if why is not None:
                raise UserError(f"query {item} is not an image plm can read ({why}); pass image files or folders")
            queries.append(item)
        else:
            raise UserError(f"query not found: {item} (pass image files or folders of images)")
    if not queries:
        raise UserError(f"no readable query images in {', '.join(items)}")
    return queries, skipped


def readable(path: str | os.PathLike) -> Optional[str]:
    """``None`` when ``path`` decodes as an image, else the reason it does not."""
    try:
        open_image(Path(path))
    except ImageLoadError as err:
        return str(err.__cause__ or err)
    return None
