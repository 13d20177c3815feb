"""The generated image folders of tests/helpers/shapes.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers.shapes import SHAPES, make_shapes_folder


def test_make_shapes_folder_writes_decodable_images(tmp_path: Path) -> None:
    paths = make_shapes_folder(tmp_path, per_class=2)
    assert len(paths) == 6 and {p.parent.name for p in paths} == set(SHAPES)
    for p in paths:
        with Image.open(p) as img:
            assert img.size == (48, 48) and np.asarray(img).std() > 5
