"""plm.utils.registry: the one pattern behind method, dataset, backbone and estimator names."""

import pytest

from plm.utils.registry import Registry, UnknownChoiceError


def test_register_get_and_order():
    reg: Registry[int] = Registry("method")
    reg.add("plm", 1)

    @reg.register("stml")
    def build():  # the decorator returns the entry unchanged
        return 2

    assert reg.get("plm") == 1 and reg.get("stml") is build
    assert reg.names() == ("plm", "stml") and list(reg) == ["plm", "stml"] and len(reg) == 2
    assert "plm" in reg and "kmeans" not in reg


def test_unknown_name_lists_choices_and_suggests():
    reg: Registry[int] = Registry("method")
    reg.add("plm", 1)
    reg.add("kmeans", 2)
    with pytest.raises(UnknownChoiceError,
                       match=r"unknown method 'kmean'; did you mean 'kmeans'\? \(choose one of plm, kmeans\)"):
        reg.get("kmean")
    with pytest.raises(ValueError, match="choose one of plm, kmeans"):
        reg.get("zzz")


def test_duplicate_name_refused():
    reg: Registry[int] = Registry("dataset")
    reg.add("cub", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("cub", 2)
