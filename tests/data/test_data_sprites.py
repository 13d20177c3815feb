"""The sprite benchmark: WML parsing, classes, splits, duplicates, the cap, determinism, the cache, a clear error.

Most tests build a small fake game folder (unit definitions and sprites written here), so they do
not depend on the game's package; the last one checks the installed game data, which
scripts/install.sh installs (CI included).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plm.data import DatasetNotFoundError, load_dataset
from plm.data.sprites import (
    SEEN_RACES,
    SPRITE_PACKAGES,
    SpriteOptions,
    build_sprite_set,
    expand_ranges,
    find_data,
    load_sprites,
    unit_classes,
)

OPTIONS = SpriteOptions(image_size=32, max_per_class=4, min_per_class=3)


def test_wml_ranges_expand_like_the_game() -> None:
    assert expand_ranges("units/a-[1~3].png") == ["units/a-1.png", "units/a-2.png", "units/a-3.png"]
    assert expand_ranges("units/a-[1~3,1].png") == ["units/a-1.png", "units/a-2.png", "units/a-3.png",
                                                    "units/a-1.png"]
    assert expand_ranges("units/a-[3~1].png") == ["units/a-3.png", "units/a-2.png", "units/a-1.png"]
    assert expand_ranges("units/a-[01~02].png") == ["units/a-01.png", "units/a-02.png"]
    assert expand_ranges("units/a-[n,ne]-[1~2].png") == ["units/a-n-1.png", "units/a-n-2.png", "units/a-ne-1.png",
                                                         "units/a-ne-2.png"]
    assert expand_ranges("units/a.png") == ["units/a.png"]


def _sprite(path: Path, seed: int, kind: int) -> None:
    """A 40×40 RGBA sprite: a coloured blob on transparency whose shape depends on ``kind`` and
    whose details depend on ``seed`` (so frames of one kind differ)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 40, 4), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    cx, cy = 20 + rng.integers(-4, 5), 20 + rng.integers(-4, 5)
    mask = ((xx - cx) ** 2 / (4 + 3 * kind) ** 2 + (yy - cy) ** 2 / (14 - kind) ** 2) < 1
    img[mask, :3] = rng.integers(0, 256, 3)
    img[mask, 3] = 255
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < 9, :3] = 255 - 20 * kind  # a mark that frames share
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGBA").save(path)


def _unit(core: Path, folder: str, uid: str, race: str, base: str, frames: int, kind: int, extra: str = "") -> None:
    (core / "units" / folder).mkdir(parents=True, exist_ok=True)
    (core / "units" / folder / f"{uid.replace(' ', '_')}.cfg").write_text(
        f'[unit_type]\n    id={uid}\n    race={race}\n    image="units/{folder}/{base}.png"\n'
        f'    [attack_anim]\n        [frame]\n            image="units/{folder}/{base}-attack-[1~{frames}].png:100"\n'
        f'        [/frame]\n    [/attack_anim]\n{extra}[/unit_type]\n')
    _sprite(core / "images/units" / folder / f"{base}.png", zlib.crc32(uid.encode()) % 1000, kind)
    for i in range(1, frames + 1):
        _sprite(core / "images/units" / folder / f"{base}-attack-{i}.png", zlib.crc32(uid.encode()) % 1000 + i, kind)
    _sprite(core / "images/units" / folder / f"{base}-die-1.png", 7, kind)  # fading frames are left out


@pytest.fixture(scope="module")
def game(tmp_path_factory: pytest.TempPathFactory) -> Path:
    core = tmp_path_factory.mktemp("wesnoth") / "data" / "core"
    for i in range(22):
        _unit(core, "humans", f"Soldier {i}", "human", f"soldier{i}", 4, i % 5)
        _unit(core, "drakes", f"Drake {i}", "drake", f"drake{i}", 4, i % 5)
    # a female form and a variation: classes of their own; a file two classes claim: left out
    _unit(core, "elves", "Archer", "elf", "archer", 3, 1,
          extra='    [female]\n        image="units/elves/archer+female.png"\n'
                '        {DEFENSE_ANIM "units/elves/archer+female-defend-[1~3].png"}\n    [/female]\n'
                '    [variation]\n        variation_id=dark\n        image="units/elves/archer-dark.png"\n'
                '        {X "units/elves/archer-dark-[1~3].png"}\n    [/variation]\n'
                '    {Y "units/drakes/drake0-attack-1.png"}\n')
    for name in ["archer+female", *[f"archer+female-defend-{i}" for i in (1, 2, 3)], "archer-dark",
                 *[f"archer-dark-{i}" for i in (1, 2, 3)]]:
        _sprite(core / "images/units/elves" / f"{name}.png", zlib.crc32(name.encode()) % 1000, 2)
    return core


def test_classes_come_from_the_unit_definitions(game: Path) -> None:
    classes = {c.name: c for c in unit_classes(game)}
    assert {"Archer", "Archer (female)", "Archer (dark)", "Soldier 0", "Drake 0"} <= set(classes)
    assert classes["Soldier 0"].images == sorted(["units/humans/soldier0.png"] +
                                                 [f"units/humans/soldier0-attack-{i}.png" for i in range(1, 5)])
    assert not any("-die-" in p for c in classes.values() for p in c.images)
    assert classes["Archer (female)"].race == "elf" and len(classes["Archer (female)"].images) == 4
    assert len(classes["Archer (dark)"].images) == 4  # the variation's own sprites, not the archer's
    assert "units/elves/archer-dark.png" not in classes["Archer"].images
    # drake0-attack-1 is named by the archer too: claimed by two classes, it belongs to neither
    assert not any(p.endswith("/drake0-attack-1.png") for c in classes.values() for p in c.images)
    assert classes["Soldier 0"].seen and not classes["Drake 0"].seen and "drake" not in SEEN_RACES


def test_splits_are_class_disjoint_capped_and_of_two_kinds(game: Path) -> None:
    splits = {s: load_sprites(s, root=game, val_classes=5, options=OPTIONS) for s in ("train", "val", "test", "all")}
    labels = {s: set(np.unique(d.labels).tolist()) for s, d in splits.items()}
    assert not (labels["train"] & labels["val"]) and not (labels["train"] & labels["test"])
    assert not (labels["val"] & labels["test"]) and len(labels["val"]) == 5
    assert labels["train"] | labels["val"] | labels["test"] == labels["all"]
    for s in ("train", "val", "test"):
        counts = np.bincount(splits[s].labels)
        assert counts[counts > 0].min() >= OPTIONS.min_per_class and counts.max() <= OPTIONS.max_per_class
    assert all(n.startswith(("Soldier", "Archer")) for c, n in splits["train"].class_names.items())
    assert all(n.startswith("Drake") for n in splits["test"].class_names.values())
    img = splits["test"].load_image(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]  # sprites on white


def test_the_set_is_deterministic_and_cached(game: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path))
    a = load_sprites("all", root=game, options=OPTIONS)
    assert len(list((tmp_path / "datasets" / "sprites").glob("*.npz"))) == 1
    b = load_sprites("all", root=game, options=OPTIONS)  # from the cache
    fresh = build_sprite_set(game, OPTIONS)
    assert a.ids == b.ids == fresh["ids"]
    assert np.array_equal(a.images, fresh["images"]) and np.array_equal(a.labels, fresh["labels"])
    other = build_sprite_set(game, SpriteOptions(image_size=32, max_per_class=4, min_per_class=3, seed=1))
    assert other["meta"]["classes"] != fresh["meta"]["classes"]  # the seed orders the seen classes


def test_near_duplicate_frames_are_dropped(game: Path) -> None:
    # soldier1-attack-5 is a copy of soldier1-attack-4: the same frame twice adds nothing
    folder = game / "images/units/humans"
    (folder / "soldier1-attack-5.png").write_bytes((folder / "soldier1-attack-4.png").read_bytes())
    try:
        def frames(distance: float) -> set[str]:
            data = build_sprite_set(game, SpriteOptions(image_size=32, max_per_class=100, min_per_class=3,
                                                        duplicate_distance=distance))
            return {i.rsplit("/", 1)[1] for i in data["ids"] if i.startswith("Soldier 1|")}

        copies = {"soldier1-attack-4.png", "soldier1-attack-5.png"}
        assert copies <= frames(0.0) and len(copies & frames(SpriteOptions().duplicate_distance)) == 1
    finally:
        (folder / "soldier1-attack-5.png").unlink()


def test_a_missing_game_names_the_package(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        find_data(tmp_path)
    assert SPRITE_PACKAGES[0] in str(err.value) and "--data-root" in str(err.value)
    (tmp_path / "units").mkdir()
    (tmp_path / "images" / "units").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="seen and 0 unseen"):
        load_sprites("train", root=tmp_path)


def test_the_installed_game_gives_the_benchmark() -> None:
    """The real set (scripts/install.sh installs the game's data): many classes, few sprites each."""
    try:
        find_data()
    except DatasetNotFoundError:
        pytest.fail(f"the game's data is not installed: run scripts/install.sh (apt-get install {SPRITE_PACKAGES[0]})")
    train = load_dataset("sprites", "train", val_classes=40)
    val = load_dataset("sprites", "val", val_classes=40)
    test = load_dataset("sprites", "test")
    assert train.num_classes >= 80 and val.num_classes == 40 and test.num_classes >= 80
    for ds in (train, val, test):
        counts = np.bincount(ds.labels)
        counts = counts[counts > 0]
        assert counts.min() >= 5 and counts.max() <= 12 and 8 <= counts.mean() <= 12
