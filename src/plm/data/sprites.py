"""Sprites: a many-class zero-shot benchmark of colour game sprites, built offline from Battle for Wesnoth.

A class is a unit type of the game (a Spearman, an Elvish Archer, a Drake Burner …; a unit's
female form and its named variations are classes of their own), an instance one of its sprites:
standing, facing another way, attacking, defending, casting, flying. Like Stanford Online Products,
there are many classes with few instances each (5 to 12 here), the instances of a class are the
same designed object seen in different poses, and ImageNet features have not seen pixel-art
sprites. The seen classes are the units of the game's peoples (humans, elves, dwarves, orcs,
goblins, trolls, ogres, woses, merfolk, dunefolk); the unseen classes are its creatures (drakes,
saurians, nagas, the undead, monsters, bats, wolves, gryphons …), another kind of image.

How the set is built, deterministically for a given installation of the game's data:

1. the unit definitions (``units/**/*.cfg``, the game's WML) give each unit type, its race, its
   base image and the images its animations name (``[1~4]`` ranges expanded); the female form and
   each ``[variation]`` are separate classes;
2. a class's images are those named in its definition plus the files next to its base image whose
   name extends the base name (``spearman-attack-1.png`` for ``spearman.png``, the longest base
   wins); images of dying, dead or death animations are left out (they fade to nothing), and so is
   an image that two classes claim;
3. each sprite is cut to its opaque pixels, centred on a white square and resized to
   ``image_size``; within a class, a sprite within ``duplicate_distance`` (mean absolute difference
   of 24×24 thumbnails, in [0, 1]) of an already kept one is an animation frame that adds nothing
   and is dropped;
4. classes keep a seeded sample of at most ``max_per_class`` sprites and need ``min_per_class``;
   the seen classes are put in a seeded random order, so the validation classes (the last
   ``val_classes`` seen ones) are a random sample of the peoples' units;
5. the rendered set is cached under ``$PLM_CACHE_DIR/datasets/sprites`` (default ``~/.cache/plm``),
   keyed by the game's files (path, size, modification time) and the options.

Nothing is downloaded. Without the game's data a :class:`~plm.data.base.DatasetNotFoundError` names
the Debian package to install (``scripts/install.sh`` installs it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from plm.data.base import ArrayImageDataset, DatasetNotFoundError, cached_image_set, class_split, datasets_cache

log = logging.getLogger(__name__)

#: the Debian package with the game's unit sprites and definitions (``scripts/install.sh``)
SPRITE_PACKAGES = ("wesnoth-1.16-data",)
#: where Debian installs the game's data (``data/core`` holds ``units/`` and ``images/units/``)
DATA_GLOBS = ("/usr/share/games/wesnoth/*/data/core", "/usr/share/wesnoth/data/core",
              "/usr/local/share/wesnoth/data/core")
#: races whose units are the seen classes (the game's peoples); every other race is unseen
SEEN_RACES = frozenset({"human", "elf", "dwarf", "orc", "goblin", "troll", "ogre", "wose", "merman", "dunefolk"})
#: image names of animations that fade out or show a corpse
_FADING = re.compile(r"(?:^|[-_+])(?:die|death|dying|dead)(?:\d|[-_.]|$)", re.I)
#: an image path of a unit, with WML ranges (``a-[1~4].png``) but without image functions (``~RC(…)``)
_IMAGE_PATH = re.compile(r"units/(?:[^\"\s:~\[\]]|\[[^\]]*\])+?\.png")
_RANGE = re.compile(r"\[([^\]]*)\]")
CACHE_VERSION = 2


@dataclass(frozen=True)
class SpriteOptions:
    """What the rendered set depends on besides the game's files."""

    image_size: int = 128
    max_per_class: int = 12
    min_per_class: int = 5
    duplicate_distance: float = 0.03
    seed: int = 0


@dataclass
class UnitClass:
    """One class: a unit type (or its female form or a variation) and its sprites."""

    name: str
    race: str
    images: list[str]

    @property
    def seen(self) -> bool:
        """Whether the class belongs to the seen side (a people's unit)."""
        return self.race in SEEN_RACES


def expand_ranges(path: str) -> list[str]:
    """Expand WML image ranges: ``a-[1~3,1].png`` → ``a-1.png a-2.png a-3.png a-1.png``.

    Items are comma-separated; ``m~n`` counts up or down (zero-padded like ``m``); ``x*k`` (a
    repeated duration) stands for ``x``. Several brackets expand left to right.
    """
    m = _RANGE.search(path)
    if not m:
        return [path]
    out: list[str] = []
    for part in (p.strip() for p in m.group(1).split(",")):
        values = [part.split("*")[0]]
        if "~" in part:
            lo, hi = part.split("~", 1)
            if lo.isdigit() and hi.isdigit():
                step = 1 if int(hi) >= int(lo) else -1
                width = len(lo) if lo.startswith("0") else 0
                values = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
        for v in values:
            out.extend(expand_ranges(path[:m.start()] + v + path[m.end():]))
    return out


def _substitute_defines(text: str) -> str:
    """Replace the file's own one-line ``#define NAME`` macros (``{NAME}``) by their values."""
    for m in re.finditer(r"#define\s+(\w+)\s*\n(.*?)#enddef", text, re.S):
        value = m.group(2).strip()
        if "\n" not in value:
            text = text.replace("{" + m.group(1) + "}", value)
    return text


def _key(block: str, key: str) -> Optional[str]:
    m = re.search(rf"^\s*{key}\s*=\s*(.+)$", block, re.M)
    return m.group(1).strip().strip('"').strip() if m else None


def parse_units(core: Path) -> list[tuple[str, str, Optional[str], list[str]]]:
    """Every unit class of the game's WML under ``core/units``: (name, race, base image, named images).

    The female form (``[female]``) and each ``[variation]`` become classes of their own, named
    ``"<unit> (female)"`` and ``"<unit> (<variation_id>)"``.
    """
    found = []
    for cfg in sorted((core / "units").rglob("*.cfg")):
        try:
            text = _substitute_defines(cfg.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        for unit in re.finditer(r"\[unit_type\](.*?)\[/unit_type\]", text, re.S):
            body = unit.group(1)
            uid, race = _key(body, "id"), _key(body, "race")
            if not uid or not race:
                continue
            forms = list(re.finditer(r"\[(female|variation)\](.*?)\[/\1\]", body, re.S))
            parts = [(f"{uid} ({_key(m.group(2), 'variation_id') or m.group(1)})", m.group(2)) for m in forms]
            main = re.sub(r"\[(female|variation)\](.*?)\[/\1\]", "", body, flags=re.S)
            for name, block in [(uid, main), *parts]:
                base = _key(block, "image")
                base = base.split("~")[0] if base and base.startswith("units/") else None
                named = [p for m in _IMAGE_PATH.finditer(block) for p in expand_ranges(m.group(0))]
                found.append((name, race.split()[0].rstrip(","), base, list(dict.fromkeys(named))))
    return found


def unit_classes(core: Path) -> list[UnitClass]:
    """The classes of the game's data under ``core`` (steps 1 and 2 of the module docs), sorted by name."""
    images = core / "images"
    units = parse_units(core)
    # a base image shared by two classes (horses of one picture) identifies neither
    base_owners = Counter(base for _, _, base, _ in units if base)
    by_folder: dict[str, list[tuple[str, str]]] = defaultdict(list)  # folder -> (base stem, class)
    for name, _, base, _ in units:
        if base and base_owners[base] == 1:
            folder, stem = base.rsplit("/", 1)
            by_folder[folder].append((stem[:-len(".png")], name))
    claimed: dict[str, set[str]] = defaultdict(set)
    for folder, bases in by_folder.items():
        root = images / folder
        if not root.is_dir():
            continue
        for file in sorted(root.glob("*.png")):
            stem = file.stem
            match = [(len(b), name) for b, name in bases if stem == b or stem.startswith(b + "-")]
            if match:
                claimed[max(match)[1]].add(f"{folder}/{file.name}")
    for name, _, _, named in units:
        claimed[name].update(named)
    owners = Counter(p for paths in claimed.values() for p in paths)
    race_of = {name: race for name, race, _, _ in units}
    classes = []
    for name in sorted(claimed):
        paths = sorted(p for p in claimed[name] if owners[p] == 1 and not _FADING.search(Path(p).stem)
                       and (images / p).is_file())
        if paths:
            classes.append(UnitClass(name, race_of[name], paths))
    return classes


def render_sprite(path: Path, size: int) -> Optional[np.ndarray]:
    """(size, size, 3) uint8: the sprite's opaque pixels centred on a white square; None when blank or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    box = rgba.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    if box is None:
        return None
    rgba = rgba.crop(box)
    w, h = rgba.size
    side = max(w, h) + 4
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - w) // 2, (side - h) // 2))
    return np.asarray(canvas.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def _thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def find_data(root: Optional[str | os.PathLike] = None) -> Path:
    """The game's ``data/core`` folder: ``root`` (that folder or one holding ``data/core``) or the installed one.

    Raises:
        DatasetNotFoundError: no unit definitions and sprites found; the message names the package.
    """
    import glob

    if root is not None:
        candidates = [Path(root).expanduser(), Path(root).expanduser() / "data" / "core"]
    else:
        candidates = [Path(p) for pattern in DATA_GLOBS for p in sorted(glob.glob(pattern), reverse=True)]
    for core in candidates:
        if (core / "units").is_dir() and (core / "images" / "units").is_dir():
            return core
    where = str(root) if root is not None else ", ".join(DATA_GLOBS)
    raise DatasetNotFoundError(
        f"the sprites dataset needs Battle for Wesnoth's unit data (units/*.cfg and images/units/*.png) and "
        f"found none under {where}. On Debian/Ubuntu run `apt-get install {' '.join(SPRITE_PACKAGES)}` "
        f"(scripts/install.sh does), or pass --data-root FOLDER holding the game's data/core folder.")


def build_sprite_set(core: Path, options: SpriteOptions = SpriteOptions()) -> dict:
    """Render the whole sprite set (steps 1-4 of the module docs).

    Returns a dict with ``images`` (N, S, S, 3) uint8, ``labels`` (N,) int64 (seen classes first,
    in their seeded order, then the unseen ones by name), ``ids`` (``"<class>|<image path>"``)
    and ``meta`` (classes, races, counts, options).

    Raises:
        DatasetNotFoundError: fewer than 20 usable classes on either side.
    """
    kept: list[tuple[UnitClass, list[tuple[str, np.ndarray]]]] = []
    for cls in unit_classes(core):
        sprites: list[tuple[str, np.ndarray]] = []
        thumbs: list[np.ndarray] = []
        for rel in cls.images:
            img = render_sprite(core / "images" / rel, options.image_size)
            if img is None:
                continue
            t = _thumbnail(img)
            if thumbs and float(np.abs(np.stack(thumbs) - t).mean(axis=(1, 2, 3)).min()) < options.duplicate_distance:
                continue
            thumbs.append(t)
            sprites.append((rel, img))
        if len(sprites) >= options.min_per_class:
            kept.append((cls, sprites))
    seen = [k for k in kept if k[0].seen]
    unseen = [k for k in kept if not k[0].seen]
    if len(seen) < 20 or len(unseen) < 20:
        raise DatasetNotFoundError(
            f"only {len(seen)} seen and {len(unseen)} unseen sprite classes with at least {options.min_per_class} "
            f"distinct sprites under {core} (need 20 on each side); install {' '.join(SPRITE_PACKAGES)}")
    order = np.random.default_rng(options.seed).permutation(len(seen))
    ordered = [seen[i] for i in order] + unseen
    images, labels, ids = [], [], []
    for label, (cls, sprites) in enumerate(ordered):
        pick = np.arange(len(sprites))
        if len(sprites) > options.max_per_class:
            rng = np.random.default_rng([options.seed, label])
            pick = np.sort(rng.choice(len(sprites), size=options.max_per_class, replace=False))
        for i in pick:
            images.append(sprites[i][1])
            labels.append(label)
            ids.append(f"{cls.name}|{sprites[i][0]}")
    meta = {
        "classes": [cls.name for cls, _ in ordered],
        "races": [cls.race for cls, _ in ordered],
        "num_seen": len(seen),
        "data": str(core),
        "options": asdict(options),
    }
    return {"images": np.stack(images), "labels": np.asarray(labels, dtype=np.int64), "ids": ids, "meta": meta}


def _cache_key(core: Path, options: SpriteOptions) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{json.dumps(asdict(options), sort_keys=True)}|{sorted(SEEN_RACES)}|"
                     f"{core.resolve()}".encode())
    for sub, pattern in (("units", "*.cfg"), ("images/units", "*.png")):
        for f in sorted((core / sub).rglob(pattern)):
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f.relative_to(core)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _load_or_build(root: Optional[str | os.PathLike], options: SpriteOptions) -> dict:
    core = find_data(root)
    path = datasets_cache("sprites") / f"{_cache_key(core, options)}.npz"
    return cached_image_set(path, lambda: build_sprite_set(core, options), "sprite")


def load_sprites(split: str = "train", root: Optional[str | os.PathLike] = None, val_classes: int = 0,
                 options: SpriteOptions = SpriteOptions()) -> ArrayImageDataset:
    """A zero-shot split of the sprite benchmark.

    ``train``/``val`` hold the peoples' units (``val`` the last ``val_classes`` of them in the
    seeded order), ``test`` the creatures, ``all`` both.

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        root: the game's ``data/core`` folder (or a folder holding ``data/core``) instead of the installed one.
        val_classes: how many seen classes form the class-disjoint ``val`` split.
        options: rendering size, per-class cap and minimum, duplicate threshold, seed.
    """
    data = _load_or_build(root, options)
    labels = data["labels"]
    names = data["meta"]["classes"]
    keep = class_split(range(len(names)), split, n_train=int(data["meta"]["num_seen"]), val_classes=val_classes)
    sel = np.flatnonzero(np.isin(labels, keep))
    ds = ArrayImageDataset(data["images"][sel], labels[sel], [data["ids"][i] for i in sel], "sprites", split)
    ds.class_names = {c: names[c] for c in keep}
    log.info("sprites %s: %d classes, %d images (%d seen and %d unseen classes in all)", split, len(keep), len(sel),
             data["meta"]["num_seen"], len(names) - data["meta"]["num_seen"])
    return ds
