"""Training configuration: defaults, layering, overrides, rejection of unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plm.training.config import (
    ConfigError,
    TrainConfig,
    default_config,
    overrides_to_dict,
    parse_override,
    read_yaml,
    resolve_config,
    valid_keys,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_roundtrip() -> None:
    cfg = TrainConfig()
    assert cfg.method == "plm" and cfg.loss.delta == 1.5 and cfg.ema.momentum == 0.999
    assert cfg.sampler.batch_size == 120 and cfg.sampler.k == 5
    again = TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_dataset_presets() -> None:
    assert default_config("fashion-mnist").model.image_size == 64
    sop = default_config("sop", mode="finetune")
    assert sop.ema.momentum == 0.9 and sop.sampler.k == sop.manifold.group_size == 2
    assert default_config("cub200", mode="finetune").model.image_size is None
    for name in ("glyphs", "fashion-mnist", "sprites", "folder"):  # one set of method defaults everywhere
        cfg = default_config(name, data_root="x")
        assert cfg.manifold.group_size == cfg.sampler.k == 5
        assert cfg.model.embed_dim is None and cfg.model.head_init == "pca_uncentered"


def test_presets_hold_only_what_follows_from_the_data() -> None:
    from plm.training.config import DATASET_PRESETS

    data_keys = {"data.val_classes", "model.image_size", "sampler.k", "sampler.batch_size",
                 "sampler.batches_per_epoch", "manifold.group_size", "proxies.num", "kmeans.num_clusters",
                 "ema.momentum", "eval.val_limit", "eval.recall_at"}

    def keys(d: dict, prefix: str = "") -> set[str]:
        return {k for name, v in d.items() for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict)
                                                      else {f"{prefix}{name}"})}

    for name, preset in DATASET_PRESETS.items():
        assert keys(preset) <= data_keys, (name, keys(preset) - data_keys)


def test_seed_group_candidates_follow_the_sampler() -> None:
    assert default_config("glyphs", overrides=["sampler.k=10"]).manifold.group_size == 10  # follows by default
    with pytest.raises(ConfigError, match=r"set manifold.group_size=10 or manifold.group_size=null"):
        default_config("glyphs", overrides=["sampler.k=10", "manifold.group_size=5"])
    cfg = default_config("glyphs", overrides=["sampler.k=10", "manifold.group_size=10"])
    assert cfg.manifold.group_size == 10
    assert default_config("glyphs", overrides=["manifold.group_size=null"]).manifold.group_size is None
    assert default_config("glyphs", method="stml", overrides=["sampler.k=10"]).sampler.k == 10  # no PL model


def test_parse_override_values_are_yaml_scalars() -> None:
    assert parse_override("loss.delta=1.2") == (["loss", "delta"], 1.2)
    assert parse_override("manifold.subset_selection=false") == (["manifold", "subset_selection"], False)
    assert parse_override("data.limit=null") == (["data", "limit"], None)
    assert parse_override("eval.recall_at=[1, 5]") == (["eval", "recall_at"], [1, 5])
    assert parse_override("model.backbone_weights=/a/b=c.pth") == (["model", "backbone_weights"], "/a/b=c.pth")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("loss.delta")


def test_overrides_apply() -> None:
    cfg = default_config("digits", overrides=["loss.delta=1.2", "proxies.num=0", "similarity=binary",
                                              "manifold.subset_selection=false", "optim.lr_embedding=1e-2"])
    assert cfg.loss.delta == 1.2 and cfg.proxies.num == 0 and cfg.similarity == "binary"
    assert cfg.manifold.subset_selection is False
    assert cfg.optim.lr_embedding == 0.01


def test_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        default_config(overrides=["loss.delt=1.2"])
    msg = str(err.value)
    assert "loss.delt" in msg and "did you mean 'loss.delta'" in msg and "manifold.eps" in msg
    with pytest.raises(ConfigError, match="unknown config key 'manifold.nope'"):
        default_config(overrides=["manifold.nope=1"])
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        TrainConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("item,match", [
    ("epochs=abc", "epochs must be an integer"),
    ("epochs=0", "epochs must be a positive"),
    ("mode=warp", "mode must be one of"),
    ("method=magic", "method must be one of"),
    ("sampler.batch_size=121", "multiple of sampler.k"),
    ("ema.momentum=2", "ema.momentum"),
    ("manifold.piece_dim=0", "manifold: piece_dim"),
    ("data.augment=maybe", "data.augment must be true or false"),
    ("loss=3", "loss must be a mapping"),
])
def test_bad_values_are_rejected(item: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        default_config(overrides=[item])


def test_binary_similarity_only_for_plm() -> None:
    with pytest.raises(ConfigError, match="ablation of method plm"):
        default_config(method="stml", overrides=["similarity=binary"])


def test_layering_file_flags_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("dataset: digits\nepochs: 7\nloss:\n  delta: 1.1\n  point: 2.0\nsampler:\n  k: 3\n  batch_size: 30\n")
    cfg = resolve_config(f, flags={"epochs": 4, "seed": None, "model.backbone": "efficientnet_lite0"},
                         overrides=["loss.delta=1.9"])
    assert cfg.dataset == "digits" and cfg.model.image_size == 32  # preset of the file's dataset
    assert cfg.epochs == 4  # flag beats file
    assert cfg.seed == 0  # None flags are ignored
    assert cfg.loss.delta == 1.9 and cfg.loss.point == 2.0  # override beats file, siblings kept
    assert cfg.sampler.k == 3


def test_read_yaml_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(bad)


def test_valid_keys_cover_sections() -> None:
    keys = valid_keys()
    for k in ("dataset", "loss.delta", "proxies.num", "manifold.subset_selection", "optim.lr_proxies", "eval.model"):
        assert k in keys


def test_overrides_to_dict_nests() -> None:
    assert overrides_to_dict(["a.b=1", "a.c=x", "d=2"]) == {"a": {"b": 1, "c": "x"}, "d": 2}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = resolve_config(path)
    assert cfg.to_dict()  # validates every section


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*_googlenet_*.yaml")), ids=lambda p: p.name)
def test_paper_configs_take_what_the_paper_states(path: Path) -> None:
    # the paper's point loss and our reading of its candidates, not plm's defaults (docs/method.md)
    cfg = resolve_config(path)
    assert cfg.loss.kind == "regression" and cfg.loss.context == 0.0
    assert cfg.manifold.group_size is None and cfg.manifold.max_candidates == 16
    assert (cfg.model.backbone, cfg.mode, cfg.sampler.batch_size) == ("googlenet", "finetune", 120)


def test_manifold_is_a_nested_section() -> None:
    from plm.manifold import ManifoldConfig

    cfg = default_config(overrides=["manifold.eps=1.25"])
    assert isinstance(cfg.manifold, ManifoldConfig) and cfg.manifold.eps == 1.25
    expected = ManifoldConfig(eps=1.25, group_size=5).to_dict()  # the seed-group default
    assert cfg.to_dict()["manifold"] == expected  # YAML / --print-config keys unchanged
    assert yaml.safe_load(cfg.to_yaml())["manifold"] == expected


def test_old_checkpoint_config_dict_resolves() -> None:
    """A checkpoint's ``config`` (a plain dict, ``manifold`` a mapping of every option) builds the same config."""
    old = TrainConfig().to_dict()
    old["manifold"] = {**old["manifold"], "eps": 0.75, "subset_selection": False}
    cfg = TrainConfig.from_dict(old)
    assert cfg.manifold.eps == 0.75 and cfg.manifold.subset_selection is False
    assert cfg.to_dict() == old
    partial = TrainConfig.from_dict({"manifold": {"piece_dim": 3}})  # missing keys keep their defaults
    assert partial.manifold.piece_dim == 3 and partial.manifold.eps == TrainConfig().manifold.eps
    assert TrainConfig.from_dict({"manifold": None}).manifold == TrainConfig().manifold
    with pytest.raises(ConfigError, match="manifold must be a mapping"):
        TrainConfig.from_dict({"manifold": 3})


def test_one_registry_of_methods() -> None:
    import argparse

    from plm.commands import train as train_command
    from plm.demo import PRESETS, VARIANTS
    from plm.training.methods import METHODS

    assert METHODS.names() == ("plm", "stml", "kmeans")
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    (method_flag,) = [a for a in parser._actions if a.dest == "method"]
    assert tuple(method_flag.choices) == METHODS.names()
    assert all(VARIANTS[name] == (name, {}) for name in METHODS.names())
    assert PRESETS["standard"]["methods"] == list(METHODS.names())
    with pytest.raises(ConfigError, match="method must be one of plm, stml, kmeans"):
        TrainConfig(method="plmm")


def test_a_registered_method_is_accepted_everywhere() -> None:
    from plm.training.methods import METHODS, Method, build_method

    marker = object()

    class Toy(Method):
        @classmethod
        def from_config(cls, config, embed_dim):
            return marker

    METHODS.add("toy", Toy)
    try:
        cfg = default_config(method="toy")
        assert cfg.method == "toy" and build_method(cfg, 8) is marker
        with pytest.raises(ConfigError, match="similarity=binary is an ablation of method plm only"):
            default_config(method="toy", similarity="binary")  # the base class's check holds for a new method
    finally:
        METHODS._entries.pop("toy")
    with pytest.raises(ConfigError, match="method must be one of"):
        default_config(method="toy")


def test_recompute_choices_and_where_auto_turns_it_on() -> None:
    import torch

    from plm.models import create_backbone
    from plm.training.pipeline import recompute_activations

    assert TrainConfig().recompute == "auto"
    with pytest.raises(ConfigError, match="recompute"):
        default_config("digits", recompute="sometimes")
    with pytest.raises(ConfigError, match="recompute=on needs model.freeze_bn=true"):
        default_config("digits", recompute="on", model={"freeze_bn": False})
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")

    def resolved(device: torch.device, **kw: object) -> bool:
        return recompute_activations(default_config("digits", mode="finetune", **kw), device, backbone)

    assert resolved(cpu) and not resolved(gpu)  # auto: on the CPU, where memory is the limit
    assert not resolved(cpu, model={"freeze_bn": False})
    assert resolved(gpu, recompute="on") and not resolved(cpu, recompute="off")


def test_bare_on_and_off_are_the_strings_in_files_and_overrides(tmp_path) -> None:
    # YAML 1.1 reads a bare on/off as a boolean: a string option takes it back as "on"/"off"
    cfg = default_config("digits", overrides=["amp=off", "recompute=on"])
    assert (cfg.amp, cfg.recompute) == ("off", "on")
    path = tmp_path / "c.yaml"
    path.write_text("amp: off\nrecompute: off\n")
    cfg = resolve_config(path)
    assert (cfg.amp, cfg.recompute) == ("off", "off")
    with pytest.raises(ConfigError, match="amp must be one of off, auto, bf16, fp16; got 'on'"):
        default_config("digits", overrides=["amp=on"])
