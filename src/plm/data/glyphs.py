"""Glyphs: a many-class zero-shot benchmark rendered offline from the installed fonts.

A class is a character, an instance is a font face. The seen classes are Latin letters and digits,
the unseen classes Greek and Cyrillic letters, each side chosen so that no two classes look alike
(``l``/``I``/``1`` keep one, Cyrillic ``П`` duplicates Greek ``Π`` and is dropped, and so on). The
variation inside a class (weight, width, slant, serif style, handwriting) is the continuous,
low-dimensional kind a piecewise-linear model is meant to capture, and ImageNet features have not
seen it.

How the set is built, deterministically for a given set of font files:

1. faces are found by scanning the font folders (``/usr/share/fonts`` and the user's font
   folders, or ``root`` when given) for TrueType/OpenType files and collections; each face's
   character map is read with fontTools; symbol, dingbat, emoji, math and icon faces are excluded;
2. every face renders a probe string per script; a face whose probe rendering is within
   ``DUPLICATE_DISTANCE`` of an already kept face is a near-duplicate for that script (metric
   clones such as Nimbus Sans and TeX Gyre Heros, or script-specific families that reuse one
   Latin design) and is dropped for that script, so two kept faces of a class never look the same;
3. each character is rendered in every kept face that covers it (and draws some ink), 64×64 grey on
   white, at one em size with the baseline at a fixed height, so glyphs keep their own size and
   position (upper and lower case differ); evaluation classes (val and test) keep a seeded sample
   of at most ``max_per_class`` faces so that Recall@K stays informative;
4. the rendered set is cached under ``$PLM_CACHE_DIR/datasets/glyphs`` (default ``~/.cache/plm``),
   keyed by the font files (path, size, modification time) and the options, so a second run starts
   in seconds. ``GlyphDataset.faces`` records which faces (and Debian packages) were used.

Nothing is downloaded. Without enough fonts a :class:`~plm.data.base.DatasetNotFoundError` names the
Debian packages to install (``scripts/install.sh`` installs them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from plm.data.base import ArrayImageDataset, DatasetNotFoundError, cached_image_set, class_split, datasets_cache

log = logging.getLogger(__name__)

#: Debian packages that give many distinct Latin, Greek and Cyrillic designs (``scripts/install.sh``).
FONT_PACKAGES = (
    "fonts-noto-core", "fonts-urw-base35", "fonts-texgyre", "fonts-cmu", "fonts-dejavu-core",
    "fonts-dejavu-extra", "fonts-freefont-ttf", "fonts-roboto-unhinted", "fonts-lato", "fonts-open-sans",
    "fonts-linuxlibertine", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-inter",
    "fonts-hack", "fonts-liberation2",
)
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts/opentype"), Path("/usr/local/share/fonts"),
             Path.home() / ".local/share/fonts", Path.home() / ".fonts")
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")

#: Seen classes: Latin letters and digits, one of each look-alike group kept (I/l/1 → none of I, l, 1;
#: O/0/o → O; lower-case letters shaped like their capitals (c o s u v w x z k) dropped).
SEEN = tuple("ABCDEFGHJKLMNOPQRSTUVWXYZ" "abdefghijmnpqrty" "23456789")
#: Unseen classes: Greek and Cyrillic letters with no look-alike in Latin (Α Β Ε … ο ρ υ χ, Cyrillic
#: А В Е К М Н О Р С Т Х У З(3)) nor in each other (Cyrillic Г П Ф Л duplicate Greek Γ Π Φ Λ;
#: Cyrillic lower case repeats its capitals' shapes).
UNSEEN = tuple("ΓΔΘΛΞΠΣΦΨΩ" "αβδεζηθλμξπσςτφψω" "БДЖИЙЦЧШЩЪЫЬЭЮЯ")
#: Probe strings for near-duplicate detection, one per script (a face's design for that script).
PROBES = {"latin": "AGKMRSWaegkmrsy2357", "greek": "ΓΔΘΛΞΣΦΨΩαβδζθλξσφψω", "cyrillic": "БДЖИЦЧШЩЫЭЮЯ"}
EXCLUDED_FAMILY = re.compile(r"symbol|dingbat|emoji|math|icon|ornament|music|braille|sign ?writing|"
                             r"fallback|last ?resort|pi$|zapf ?ding|standard symbols|d050000l", re.I)
#: Soft Jaccard distance of two probe renderings below which two faces count as one design. Measured on
#: the faces above: metric clones (FreeSans / Nimbus Sans, Hack / DejaVu Sans Mono, FreeSerif / Nimbus
#: Roman) sit at 0.05-0.28, neighbouring weights of one family at 0.08-0.30.
DUPLICATE_DISTANCE = 0.25
CACHE_VERSION = 1


def _script(ch: str) -> str:
    cp = ord(ch)
    if 0x0370 <= cp <= 0x03FF:
        return "greek"
    if 0x0400 <= cp <= 0x04FF:
        return "cyrillic"
    return "latin"


@dataclass(frozen=True)
class FontFace:
    """One face of a font file: ``index`` inside a collection, names from its name table."""

    path: str
    index: int
    family: str
    style: str
    package: str = ""

    @property
    def key(self) -> str:
        """A stable identifier: family, style and file name."""
        return f"{self.family} {self.style} ({Path(self.path).name}#{self.index})"


def _fontconfig_files() -> set[Path]:
    """The font files fontconfig knows (it reads folders the scan does not), or none without it."""
    import shutil
    import subprocess

    if shutil.which("fc-list") is None:
        return set()
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\\n"], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {Path(line) for line in out.splitlines() if line.lower().endswith(FONT_EXTENSIONS)}


def font_files(dirs: Optional[Iterable[str | os.PathLike]] = None) -> list[Path]:
    """TrueType/OpenType files under ``dirs``, sorted; by default the system and user font folders
    plus every file fontconfig lists."""
    roots = [Path(d).expanduser() for d in dirs] if dirs is not None else list(FONT_DIRS)
    found: set[Path] = set() if dirs is not None else {p for p in _fontconfig_files() if p.is_file()}
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _, files in os.walk(root, followlinks=False):
            for name in files:
                if name.lower().endswith(FONT_EXTENSIONS):
                    p = Path(dirpath) / name
                    if p.is_file():
                        found.add(p)
    return sorted(found)


def _debian_packages() -> dict[str, str]:
    """Installed file → Debian package, from dpkg's file lists of font packages (empty elsewhere)."""
    info = Path("/var/lib/dpkg/info")
    owners: dict[str, str] = {}
    if not info.is_dir():
        return owners
    for lst in info.glob("fonts-*.list"):
        pkg = lst.name[: -len(".list")].split(":")[0]
        try:
            for line in lst.read_text(errors="replace").splitlines():
                if line.lower().endswith(FONT_EXTENSIONS):
                    owners[line] = pkg
        except OSError:
            continue
    return owners


def _read_faces(path: Path, owners: dict[str, str]) -> list[tuple[FontFace, frozenset[int]]]:
    """Every face in ``path`` with its covered code points; unreadable files give none."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    try:
        if path.suffix.lower() in (".ttc", ".otc"):
            fonts = list(TTCollection(str(path), lazy=True).fonts)
        else:
            fonts = [TTFont(str(path), lazy=True)]
    except (TTLibError, OSError, ValueError, AssertionError, KeyError, IndexError):
        return []
    package = owners.get(str(path), owners.get(str(path.resolve()), ""))
    faces = []
    for index, font in enumerate(fonts):
        try:
            name = font["name"]
            family = str(name.getBestFamilyName() or path.stem)
            style = str(name.getBestSubFamilyName() or "Regular")
            cmap = font.getBestCmap() or {}
        except Exception:  # noqa: BLE001 - any broken table makes the face unusable, nothing more
            continue
        faces.append((FontFace(str(path), index, family, style, package), frozenset(cmap)))
    return faces


class _Renderer:
    """Renders single characters of one face: fixed em size, fixed baseline, centred by ink."""

    def __init__(self, face: FontFace, size: int):
        from PIL import ImageFont

        self.size = size
        self.font = ImageFont.truetype(face.path, size=max(1, round(size * 0.62)), index=face.index)
        self.baseline = round(size * 0.72)

    def render(self, ch: str) -> Optional[np.ndarray]:
        """(size, size) uint8, ink dark on white; None when the face draws no ink for ``ch``."""
        from PIL import Image, ImageDraw

        try:
            left, _, right, _ = self.font.getbbox(ch, anchor="ls")
        except (OSError, ValueError):
            return None
        img = Image.new("L", (self.size, self.size), 255)
        x = (self.size - (right - left)) / 2 - left
        ImageDraw.Draw(img).text((x, self.baseline), ch, font=self.font, fill=0, anchor="ls")
        arr = np.asarray(img, dtype=np.uint8)
        if (arr < 128).sum() < max(2, self.size // 16):
            return None
        return arr


def _probe_vector(renderer: _Renderer, text: str) -> Optional[np.ndarray]:
    """The ink map (1 = ink) of ``text`` rendered glyph by glyph, flattened; None if a glyph is blank."""
    glyphs = [renderer.render(ch) for ch in text]
    inked = [g for g in glyphs if g is not None]
    if len(inked) < len(glyphs):
        return None
    return 1.0 - np.concatenate([g.reshape(-1) for g in inked]).astype(np.float32) / 255.0


def ink_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Soft Jaccard distance between ink maps (1 = ink): ``Σ|a − b| / Σ max(a, b)`` over the last axis.

    0 for identical renderings, 1 for disjoint ones; unlike a mean pixel difference it does not
    shrink for thin strokes on a mostly white canvas.
    """
    return np.abs(a - b).sum(-1) / np.maximum(np.maximum(a, b).sum(-1), 1e-6)


def _keep_distinct(ink: list[np.ndarray], threshold: float, chunk: int = 64) -> list[int]:
    """Greedy, in order: the indices whose ink map is at least ``threshold`` from every kept one.

    The same rule as comparing each map with every kept one by :func:`ink_distance`, only faster:
    with L = Σ|a − b|, Σ max(a, b) = (Σa + Σb + L) / 2, so the distance 2L / (Σa + Σb + L) grows
    with L, and the L1 distance of sums over runs of ``chunk`` entries is a lower bound of L. Kept
    maps whose bound already puts them clearly beyond ``threshold`` are not compared in full.
    """
    if not ink:
        return []
    n, length = len(ink), ink[0].shape[-1]
    starts = np.arange(0, length, chunk)
    kept: list[int] = []
    bank = np.empty((n, length), dtype=ink[0].dtype)  # the kept maps, in order
    coarse = np.empty((n, len(starts)), dtype=np.float64)  # their sums over runs of `chunk` entries
    total = np.empty(n, dtype=np.float64)
    for i, v in enumerate(ink):
        cv = np.add.reduceat(v.astype(np.float64), starts)
        sv = float(cv.sum())
        k = len(kept)
        if k:
            low = np.abs(coarse[:k] - cv).sum(1)
            bound = 2.0 * low / np.maximum(total[:k] + sv + low, 1e-300)
            # a margin far above float32 rounding of the full comparison: pruned maps are clearly distinct
            # (nearly blank pairs, under ink_distance's floor of the denominator, are always compared)
            near = np.flatnonzero((bound < threshold + 1e-3) | (total[:k] + sv + low < 2e-6))
            if len(near) and float(ink_distance(bank[near], v).min()) < threshold:
                continue
        bank[k], coarse[k], total[k] = v, cv, sv
        kept.append(i)
    return kept


@dataclass(frozen=True)
class GlyphOptions:
    """What the rendered set depends on besides the font files."""

    image_size: int = 64
    max_per_class: int = 40
    min_faces: int = 20
    duplicate_distance: float = DUPLICATE_DISTANCE
    seed: int = 0


def _cache_key(files: Sequence[Path], options: GlyphOptions) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{json.dumps(asdict(options), sort_keys=True)}|{SEEN}|{UNSEEN}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _missing_fonts_error(detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"the glyphs dataset needs installed fonts: {detail}. On Debian/Ubuntu run "
        f"`apt-get install {' '.join(FONT_PACKAGES)}` (scripts/install.sh does), or pass --data-root "
        f"FOLDER holding .ttf/.otf/.ttc files.")


def build_glyph_set(root: Optional[str | os.PathLike] = None, options: GlyphOptions = GlyphOptions(),
                    files: Optional[Sequence[Path]] = None) -> dict:
    """Render the whole glyph set (every class, every kept face) from the fonts found.

    Returns a dict with ``images`` (N, S, S) uint8, ``labels`` (N,) int64 class ids (the index in
    ``SEEN + UNSEEN``), ``ids`` (``"U+XXXX|<face key>"``) and ``meta`` (faces, packages, classes).

    ``files`` (the :func:`font_files` of ``root``) saves a second scan when the caller has them.

    Raises:
        DatasetNotFoundError: no font files, or too few faces for at least 40 classes on each side.
    """
    files = list(files) if files is not None else font_files([root] if root is not None else None)
    if not files:
        where = root if root is not None else ", ".join(map(str, FONT_DIRS))
        raise _missing_fonts_error(f"no .ttf/.otf/.ttc files under {where}")
    owners = _debian_packages()
    faces: list[tuple[FontFace, frozenset[int]]] = []
    for f in files:
        faces.extend(_read_faces(f, owners))
    faces = [(face, cov) for face, cov in faces if not EXCLUDED_FAMILY.search(face.family)]
    faces.sort(key=lambda fc: (fc[0].family, fc[0].style, fc[0].path, fc[0].index))
    renderers: dict[int, _Renderer] = {}
    size = options.image_size

    def renderer(i: int) -> Optional[_Renderer]:
        if i not in renderers:
            try:
                renderers[i] = _Renderer(faces[i][0], size)
            except OSError:
                return None
        return renderers[i]

    classes = SEEN + UNSEEN
    kept_by_script: dict[str, list[int]] = {}
    for script, probe in PROBES.items():
        candidates, vectors = [], []
        for i, (_, cov) in enumerate(faces):
            if not all(ord(ch) in cov for ch in probe):
                continue
            r = renderer(i)
            v = _probe_vector(r, probe) if r is not None else None
            if v is not None:
                candidates.append(i)
                vectors.append(v)
        kept_by_script[script] = [candidates[k] for k in _keep_distinct(vectors, options.duplicate_distance)]
    images, labels, ids = [], [], []
    per_class: dict[str, int] = {}
    for label, ch in enumerate(classes):
        count = 0
        for i in kept_by_script[_script(ch)]:
            if ord(ch) not in faces[i][1]:
                continue
            r = renderer(i)
            img = r.render(ch) if r is not None else None
            if img is None:
                continue
            images.append(img)
            labels.append(label)
            ids.append(f"U+{ord(ch):04X}|{faces[i][0].key}")
            count += 1
        per_class[ch] = count
    thin = [ch for ch, n in per_class.items() if n < options.min_faces]
    ok_seen = sum(per_class[ch] >= options.min_faces for ch in SEEN)
    ok_unseen = sum(per_class[ch] >= options.min_faces for ch in UNSEEN)
    need = min(40, len(SEEN), len(UNSEEN))
    if ok_seen < need or ok_unseen < need:
        raise _missing_fonts_error(
            f"only {ok_seen} Latin and {ok_unseen} Greek/Cyrillic classes have at least {options.min_faces} "
            f"distinct faces (need {need} on each side; {len(files)} font files found)")
    if thin:
        keep = np.array([classes[lab] not in thin for lab in labels])
        images = [im for im, k in zip(images, keep, strict=True) if k]
        ids = [x for x, k in zip(ids, keep, strict=True) if k]
        labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    used = sorted({i for idx in kept_by_script.values() for i in idx})
    meta = {
        "font_files": len(files),
        "faces_found": len(faces),
        "faces": [dict(asdict(faces[i][0]), scripts=[s for s, idx in kept_by_script.items() if i in idx])
                  for i in used],
        "packages": sorted({faces[i][0].package for i in used if faces[i][0].package}),
        "faces_per_script": {s: len(idx) for s, idx in kept_by_script.items()},
        "classes_dropped": thin,
        "options": asdict(options),
    }
    return {"images": np.stack(images) if images else np.zeros((0, size, size), np.uint8),
            "labels": np.asarray(labels, dtype=np.int64), "ids": ids, "meta": meta}


def _load_or_build(root: Optional[str | os.PathLike], options: GlyphOptions) -> dict:
    files = font_files([root] if root is not None else None)
    if not files:
        return build_glyph_set(root, options)  # raises the error that names the packages
    path = datasets_cache("glyphs") / f"{_cache_key(files, options)}.npz"
    return cached_image_set(path, lambda: build_glyph_set(root, options, files), "glyph")


class GlyphDataset(ArrayImageDataset):
    """A split of the glyph benchmark; ``faces`` and ``packages`` record the fonts used."""

    faces: list[dict]
    packages: list[str]


def load_glyphs(split: str = "train", root: Optional[str | os.PathLike] = None, val_classes: int = 0,
                options: GlyphOptions = GlyphOptions()) -> GlyphDataset:
    """A zero-shot split of the glyph benchmark.

    ``train``/``val`` hold the Latin classes (``val`` the last ``val_classes`` of them), ``test``
    the Greek and Cyrillic ones, ``all`` both. Evaluation splits (``val``, ``test``) keep a seeded
    sample of at most ``options.max_per_class`` faces per class; ``train`` keeps every distinct face.

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        root: a folder of font files to use instead of the system's font folders.
        val_classes: how many seen classes form the class-disjoint ``val`` split.
        options: rendering size, the per-class cap, the minimum faces per class, the duplicate
            threshold and the sampling seed.
    """
    data = _load_or_build(root, options)
    labels = data["labels"]
    present = sorted(set(labels.tolist()))
    n_seen = sum(1 for c in present if c < len(SEEN))
    keep_classes = class_split(present, split, n_train=n_seen, val_classes=val_classes)
    capped = set(class_split(present, "val", n_seen, val_classes)) if val_classes else set()
    if split in ("test", "all"):
        capped |= set(present[n_seen:])
    rows: list[np.ndarray] = []
    for c in keep_classes:
        idx = np.flatnonzero(labels == c)
        if c in capped and len(idx) > options.max_per_class:
            rng = np.random.default_rng([options.seed, c])  # per class: the same sample in every split
            idx = np.sort(rng.choice(idx, size=options.max_per_class, replace=False))
        rows.append(idx)
    sel = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    classes = SEEN + UNSEEN
    ds = GlyphDataset(data["images"][sel], labels[sel], [data["ids"][i] for i in sel], "glyphs", split)
    ds.class_names = {c: classes[c] for c in keep_classes}
    ds.faces = data["meta"]["faces"]
    ds.packages = data["meta"]["packages"]
    per_script = data["meta"]["faces_per_script"]
    log.info("glyphs %s: %s, %d images; %d faces (Latin %d, Greek %d, Cyrillic %d) from %d font files", split,
             _split_summary(split, len(keep_classes), n_seen, len(present) - n_seen, val_classes,
                            options.max_per_class),
             len(sel), len(ds.faces), per_script["latin"], per_script["greek"], per_script["cyrillic"],
             data["meta"]["font_files"])
    return ds


def _split_summary(split: str, kept: int, seen: int, unseen: int, val_classes: int, cap: int) -> str:
    """What a split holds and what was carved out of it, e.g. ``37 of the 49 seen classes (the other 12 are
    the val split)``: loading a split twice with different ``val_classes`` says why the counts differ."""
    if split == "train":
        return (f"{kept} of the {seen} seen classes (the other {seen - kept} are the val split)"
                if val_classes else f"all {seen} seen classes (none held out for validation)")
    if split == "val":
        return f"{kept} seen classes held out for validation (at most {cap} faces each)"
    if split == "test":
        return f"{kept} unseen classes (at most {cap} faces each)"
    return f"{kept} classes ({seen} seen, {unseen} unseen)"
