"""Backbone steps, the prefix/tail split of frozen mode's ``model.train_blocks``, and augmented views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from plm.data import ArrayImageDataset
from plm.data.views import AugmentedViews, random_resized_crop_box
from plm.models import ModelConfig, create_model
from plm.models.partial import PrefixModel, TailModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(ModelConfig(embed_dim=16, image_size=32), pretrained=False).eval()


def test_the_steps_compose_to_the_backbone(model) -> None:
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = x
        for unit in model.backbone.units():
            y = unit(y)
        assert torch.equal(y, model.backbone(x))
    owned = {id(p) for unit in model.backbone.units() for p in unit.parameters()}
    assert owned == {id(p) for p in model.backbone.parameters()}  # every weight belongs to exactly one step


@pytest.mark.parametrize("train_blocks", [1, 2, 6])
def test_prefix_then_tail_is_the_whole_model(model, train_blocks: int) -> None:
    start = len(model.backbone.units()) - train_blocks
    feature_config = ModelConfig(embed_dim=None, image_size=32, normalize=False)
    prefix = PrefixModel(model.backbone, feature_config, start)
    tail = TailModel(model, start, prefix.map_shape)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        maps = prefix.features(x)
        assert maps.shape == (4, prefix.feature_dim)
        assert torch.allclose(tail(maps), model(x), atol=1e-5)
        assert torch.allclose(tail.pooled(maps), model.features(x), atol=1e-5)
    # only the tail's steps and the head train
    tail.trainable_()
    trainable = {id(p) for p in tail.parameters() if p.requires_grad}
    expected = {id(p) for unit in model.backbone.units()[start:] for p in unit.parameters()}
    expected |= {id(p) for p in model.head.parameters()}
    assert trainable == expected
    # its state dict is the model's, so a checkpoint of it loads into a plain model
    state = {k[len("model."):]: v for k, v in tail.state_dict().items()}
    other = create_model(ModelConfig(embed_dim=16, image_size=32), pretrained=False)
    other.load_state_dict(state)
    model.requires_grad_(True)


def test_the_prefix_cache_key_depends_on_where_it_ends(model) -> None:
    from plm.evaluation.embed import model_fingerprint

    cfg = ModelConfig(embed_dim=None, image_size=32, normalize=False)
    a = PrefixModel(model.backbone, cfg, 10)
    b = PrefixModel(model.backbone, cfg, 11)
    assert model_fingerprint(a) != model_fingerprint(b)
    with pytest.raises(ValueError, match="inside the backbone"):
        PrefixModel(model.backbone, cfg, len(model.backbone.units()))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_crop_boxes_stay_inside_the_image(w: int, h: int, seed: int) -> None:
    left, top, right, bottom = random_resized_crop_box(w, h, np.random.default_rng(seed))
    assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_views_are_seeded_per_image_and_view() -> None:
    rng = np.random.default_rng(0)
    parent = ArrayImageDataset(rng.integers(0, 255, (5, 40, 40, 3), dtype=np.uint8), np.arange(5),
                               [f"img{i}" for i in range(5)], "toy", "train")
    views = AugmentedViews(parent, 3, size=36)
    assert len(views) == 15 and views.labels.tolist() == list(range(5)) * 3
    assert views.ids[7] == "img2#view1"
    first = [np.asarray(views.load_image(i)) for i in range(15)]
    torch.manual_seed(123)  # the global random state does not matter
    again = [np.asarray(views.load_image(i)) for i in reversed(range(15))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(isinstance(views.load_image(i), Image.Image) and views.load_image(i).size == (36, 36) for i in (0, 14))
    assert not np.array_equal(first[2], first[7])  # view 0 and view 1 of image 2 differ
    assert views.fingerprint() != AugmentedViews(parent, 3, size=36, seed=1).fingerprint()
    assert views.fingerprint() != AugmentedViews(parent, 2, size=36).fingerprint()
