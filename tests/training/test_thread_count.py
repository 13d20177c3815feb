"""A run's weights do not depend on the number of intra-op threads.

Small images leave most pooled features zero on every training image, and the full-width head
then has directions without data; they once came from the eigen-solver, which returns other
directions with another thread count (the 2-process test failed whenever the parent process
ran with more threads than its ranks). They are now a fixed completion (tests/models), but their
outputs on the training features are of rounding size, not zero, and the loss grows whatever noise
they receive: on a CPU whose matrix kernels round differently with 1 and 2 threads, the full-width
head's weights part in those rows within a few steps (docs/training.md, "Distributed training").
The run here uses a head whose every direction carries variance of the training features.
"""

from __future__ import annotations

import torch


def test_weights_do_not_depend_on_the_thread_count(tmp_path, monkeypatch) -> None:
    from plm.training import default_config
    from plm.training.trainer import Trainer

    monkeypatch.setenv("PLM_CACHE_DIR", str(tmp_path / "cache"))
    config = default_config("digits", method="plm", mode="frozen", epochs=1,
                            log={"progress": False, "tensorboard": False},
                            sampler={"batch_size": 30, "k": 5, "batches_per_epoch": 3}, proxies={"num": 6},
                            eval={"nmi": False, "baseline": False}, data={"limit": 300},
                            model={"embed_dim": 128, "head_init": "pca"})
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}"
            Trainer(config, out, progress=False).run()
            states.append(torch.load(out / "last.pt", map_location="cpu", weights_only=True)["student_state"])
    finally:
        torch.set_num_threads(before)
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key].float(), states[1][key].float(), atol=1e-5, rtol=0, msg=key)
