"""Backbones in the channels-first (NCHW) and channels-last memory layouts, side by side.

For each backbone, one process builds it twice (random weights: the layout, not the weights, sets
the speed) and alternates the two layouts over the repeats: an embedding pass (eval mode, no
gradient) and a fine-tuning step (forward and backward, train mode) on one batch. Reports the
median of each and the NCHW / channels-last ratio (above 1: channels-last is faster), and which
layout plm uses for that backbone (:attr:`plm.models.backbones.Backbone.channels_last`).

    python -m benchmarks.bench_layout                       # the default set, 2 threads
    python -m benchmarks.bench_layout --backbones efficientnet_lite0 resnet50 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

DEFAULT_BACKBONES = ("efficientnet_lite0", "resnet50", "googlenet", "mobilenet_v3_large", "efficientnet_b0",
                     "convnext_tiny", "vit_b_16")


def _with_layout(backbone, channels_last: bool):
    import torch

    bb = copy.deepcopy(backbone)
    bb.channels_last = channels_last
    bb.body.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return bb


def measure(name: str, batch: int, size: int, repeats: int) -> dict[str, float | str | bool]:
    """Median seconds of an embedding pass and a training step in each layout, and their ratios."""
    import torch

    from plm.models.backbones import create_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = create_backbone(name, pretrained=False)
    if name.startswith("vit"):
        size = base.preprocess.input_size  # torchvision's ViTs take their own input size only
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    models = {"nchw": _with_layout(base, False), "channels_last": _with_layout(base, True)}
    times: dict[str, list[float]] = {f"{k}_{p}": [] for k in models for p in ("embed", "step")}

    def embed(bb) -> None:
        bb.eval()
        with torch.no_grad():
            bb(x)

    def step(bb) -> None:
        bb.train()
        bb(x).float().pow(2).mean().backward()
        bb.zero_grad(set_to_none=True)

    for bb in models.values():  # warm-up
        embed(bb)
        step(bb)
    for _ in range(repeats):
        for key, bb in models.items():
            for part, fn in (("embed", embed), ("step", step)):
                start = time.perf_counter()
                fn(bb)
                times[f"{key}_{part}"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"backbone": name, "size": size, "plm_layout": "channels_last" if base.channels_last else "nchw", **med,
            "embed_ratio": med["nchw_embed"] / med["channels_last_embed"],
            "step_ratio": med["nchw_step"] / med["channels_last_step"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="input side (ViTs use their own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} threads, median of {args.repeats}; ratio = NCHW / channels-last")
    print(f"{'backbone':<20} {'px':>4} {'embed NCHW':>11} {'embed CL':>9} {'ratio':>6} {'step NCHW':>10} "
          f"{'step CL':>8} {'ratio':>6}  plm uses")
    for name in args.backbones:
        r = measure(name, args.batch, args.size, args.repeats)
        print(f"{name:<20} {r['size']:>4} {r['nchw_embed']:>10.3f}s {r['channels_last_embed']:>8.3f}s "
              f"{r['embed_ratio']:>6.2f} {r['nchw_step']:>9.3f}s {r['channels_last_step']:>7.3f}s "
              f"{r['step_ratio']:>6.2f}  {r['plm_layout']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
