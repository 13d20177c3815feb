"""The one model factory and the registries of datasets, backbones and estimators (issue 12)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from plm.errors import NoPretrainedWeightsError, UserError
from plm.models import BACKBONES, ModelConfig, create_backbone, list_backbones, save_model
from plm.models.factory import build_embedder
from plm.utils.registry import Registry, UnknownChoiceError


def test_no_shipped_weights_is_its_own_exception_type() -> None:
    with pytest.raises(NoPretrainedWeightsError, match="pretrained=PATH"):
        create_backbone("resnet50", pretrained=True)
    assert issubclass(NoPretrainedWeightsError, ValueError)  # callers catching ValueError still do


@pytest.mark.parametrize("hint", ["pass --weights FILE", "set model.backbone_weights=PATH"])
def test_factory_turns_missing_weights_into_one_user_error(hint: str) -> None:
    # issue 24: neither cached nor downloadable (tests run offline): the file to pass and where to put it
    with pytest.raises(UserError, match=f"no pretrained weights for googlenet here \\(not in the cache, and "
                                        f"downloads are off \\(PLM_OFFLINE\\)\\): {hint} \\(googlenet-1378be20.pth "
                                        f"from https://download.pytorch.org/models/googlenet-1378be20.pth\\), "
                                        f"or copy it to .*hub/checkpoints/googlenet-1378be20.pth"):
        build_embedder("googlenet", weights_hint=hint)


def test_factory_other_value_errors_pass_through(tmp_path: Path) -> None:
    bad = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="does not fit backbone resnet50") as info:
        build_embedder("resnet50", weights=bad)
    assert not isinstance(info.value, UserError)
    with pytest.raises(ValueError, match="exactly one"):
        build_embedder()
    with pytest.raises(ValueError, match="exactly one"):
        build_embedder("resnet50", checkpoint=bad)


def test_factory_builds_from_a_name_a_config_and_a_checkpoint(tmp_path: Path) -> None:
    by_name = build_embedder("efficientnet_lite0", image_size=64)
    assert by_name.config.backbone == "efficientnet_lite0" and by_name.config.image_size == 64
    assert by_name.config.embed_dim is None and by_name.config.normalize
    torch.manual_seed(0)
    with_head = build_embedder(ModelConfig(backbone="efficientnet_lite0", embed_dim=8, pooling="avg",
                                           normalize=True, image_size=None), image_size=96)
    assert with_head.out_dim == 8 and with_head.config.image_size == 96
    path = tmp_path / "m.pt"
    save_model(with_head, path)
    back = build_embedder(checkpoint=path, image_size=128)
    assert back.out_dim == 8 and back.config.image_size == 128
    with pytest.raises(ValueError, match="--image-size must be an integer >= 32"):
        build_embedder(checkpoint=path, image_size=8)


def test_cli_and_search_identity_use_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    import plm.models.factory as factory
    from plm.commands._common import model_from_args
    from plm.search.identity import model_from_identity

    calls = []
    monkeypatch.setattr(factory, "build_embedder", lambda **kw: calls.append(kw) or "model")
    args = argparse.Namespace(backbone="googlenet", checkpoint=None, weights="w.pth", image_size=64)
    assert model_from_args(args) == "model"
    assert calls[-1] == {"backbone": "googlenet", "checkpoint": None, "weights": "w.pth", "image_size": 64}
    with pytest.raises(AttributeError):  # the stub is no model: fails past the factory call, which is what we check
        model_from_identity({"source": "backbone", "backbone": "resnet50", "weights": None, "image_size": None})
    assert calls[-1] == {"backbone": "resnet50", "checkpoint": None, "weights": None, "image_size": None}


def test_the_pipeline_uses_the_factory_with_the_config_hint() -> None:
    from plm.training.config import default_config
    from plm.training.pipeline import build_model

    cfg = default_config()
    cfg.model.backbone = "googlenet"
    with pytest.raises(UserError, match="set model.backbone_weights=PATH"):
        build_model(cfg)


def test_datasets_backbones_and_estimators_are_registries() -> None:
    from plm.data import DATASETS, load_dataset
    from plm.estimators import DEFAULT_ESTIMATORS, ESTIMATORS, PLManifoldEstimator

    for reg in (DATASETS, BACKBONES, ESTIMATORS):
        assert isinstance(reg, Registry)
    assert DATASETS.names() == ("cub200", "cars196", "sop", "fashion-mnist", "glyphs", "sprites", "digits", "folder")
    assert "digits" in DATASETS and list(DATASETS) == list(DATASETS.names()) and callable(DATASETS.get("digits"))
    assert list_backbones() == sorted(BACKBONES.names())
    assert {"efficientnet_lite0", "googlenet", "resnet50", "vit_b_16", "convnext_tiny"} <= set(list_backbones())
    assert ESTIMATORS.get("plm") is PLManifoldEstimator
    assert DEFAULT_ESTIMATORS == ESTIMATORS.names() == ("kmeans", "hierarchical", "random_walk", "gaussian", "stml",
                                                        "plm")
    with pytest.raises(UnknownChoiceError, match="unknown dataset 'digit'; did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ValueError, match="unknown estimator 'pl'"):
        ESTIMATORS.get("pl")


def test_cli_choices_read_the_registries() -> None:
    from plm.cli import build_parser
    from plm.data import DATASETS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dataset = next(a for a in sub.choices["eval"]._actions if a.dest == "dataset")
    assert tuple(dataset.choices) == DATASETS.names()
    report = sub.choices["similarity-report"]
    estimators = next(a for a in report._actions if a.dest == "estimators")
    from plm.estimators import ESTIMATORS

    assert estimators.default == list(ESTIMATORS.names()) and ", ".join(ESTIMATORS.names()) in estimators.help


def test_cli_choice_lists_are_the_library_constants() -> None:
    """Every fixed choice list of the command line is read from plm.utils.choices, where the library's
    modules read theirs: no copy can drift."""
    import argparse

    import plm.data.base
    import plm.demo
    import plm.manifold.config
    import plm.search.index
    import plm.training.config
    import plm.utils.device
    import plm.viz.maps
    from plm.cli import build_parser
    from plm.utils import choices as C

    assert plm.utils.device.DEVICES is C.DEVICES and plm.utils.device.AMP_MODES is C.AMP_MODES
    assert plm.training.config.MODES is C.MODES and plm.data.base.SPLITS is C.SPLITS
    assert plm.demo.DEMO_DATASETS is C.DEMO_DATASETS and plm.viz.maps.METHODS is C.MAP_METHODS
    assert plm.search.index.KINDS is C.INDEX_KINDS and plm.search.index.METRICS is C.INDEX_METRICS
    m = plm.manifold.config
    assert (m.CRITERIA, m.SYMMETRIZE, m.ON_BREACH) == (C.CRITERIA, C.SYMMETRIZE, C.ON_BREACH)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))

    def choices(command: str, dest: str) -> list:
        return list(next(a for a in sub.choices[command]._actions if a.dest == dest).choices)

    for command in ("train", "demo", "embed", "eval"):
        assert choices(command, "device") == list(C.DEVICES), command
        assert choices(command, "amp") == list(C.AMP_MODES), command
    assert choices("demo", "dataset") == list(C.DEMO_DATASETS)
    assert choices("train", "mode") == [m for m in C.MODES if m != "auto"]
    assert choices("eval", "split") == list(C.SPLITS)
    assert choices("index", "kind") == ["auto", *C.INDEX_KINDS]
    assert choices("index", "metric") == ["auto", *C.INDEX_METRICS]
    assert choices("map", "method") == ["auto", *C.MAP_METHODS]
    report = {d: choices("similarity-report", d) for d in ("criterion", "symmetrize", "on_breach")}
    assert report == {"criterion": list(C.CRITERIA), "symmetrize": list(C.SYMMETRIZE), "on_breach": list(C.ON_BREACH)}


def test_lazy_package_exports_keep_the_old_names() -> None:
    import plm.data
    import plm.evaluation
    import plm.neighbors
    from plm.evaluation import knn, retrieval_metrics

    assert knn is plm.neighbors.knn and knn.__module__ == "plm.neighbors.exact"
    assert callable(retrieval_metrics)
    assert plm.data.ImageDataset.__name__ == "ImageDataset" and "safe_join" in dir(plm.data)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        plm.data.nope  # noqa: B018
