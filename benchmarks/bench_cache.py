"""What keeping the decoded images in memory saves a default run, and that it trains the same.

    python benchmarks/bench_cache.py                                   # MobileNet-0.25, 2 pairs
    python benchmarks/bench_cache.py --backbone=efficientnet_lite0 --pairs=1
    python benchmarks/bench_cache.py --quick                           # tiny base (the suite)

`tl_keras.train` with no recipe setting on bench_recipe's `user` split of the shared flowers at
128 px (seed 0), once with `cache="none"` (every epoch decodes its JPEGs again) and once with
`cache="auto"` (the default: this set's decoded images fit in memory, so `memory`), the two
alternating in one process, `--pairs` times. Reports each run's wall, process CPU seconds (both
cores) and fine-tuning phase wall, and the largest absolute difference between the two arms'
trained weights (0.0: the cache changes how an image is loaded, not its pixels or the order).
Writes benchmarks/results/cache.json (cache_<backbone>.json for another base).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import _common


def one_run(config, root: str) -> dict:
    """Trains config in a new workdir under root; its wall, CPU-s, phase walls and workdir."""
    from tl_keras import train

    workdir = tempfile.mkdtemp(prefix="bench-cache-", dir=root)
    w, c = time.perf_counter(), time.process_time()
    train(config, workdir)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    with open(os.path.join(workdir, "ft", "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "phase_wall_s": {p: v["wall_time_s"] for p, v in run["phases"].items()},
        "cache": summary["data"]["pipeline"]["cache"],
        "workdir": workdir,
    }


def largest_weight_difference(a: str, b: str) -> float:
    import numpy as np

    from tl_keras.inference.trained import load_trained

    wa, wb = (load_trained(w).model.get_weights() for w in (a, b))
    return max(float(np.max(np.abs(x - y))) for x, y in zip(wa, wb, strict=True) if x.size)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenet_025", help="bench_recipe's BACKBONES")
    ap.add_argument("--pairs", type=int, default=2, help="none/auto pairs, alternating")
    ap.add_argument("--quick", action="store_true", help="tiny base, synthetic images, 1 pair")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-cache-")
    if args.quick:
        config, pairs = _common.tiny_config(doctor="off"), 1
    else:
        import bench_recipe

        # The regime's folders are written once, here; each run only changes the cache.
        config = bench_recipe.flowers_config(root, args.backbone, seed=0, progress="lines")
        pairs = args.pairs
    runs = {"none": [], "auto": []}
    for i in range(pairs):
        for cache in ("none", "auto") if i % 2 == 0 else ("auto", "none"):
            r = one_run(dataclasses.replace(config, cache=cache), root)
            runs[cache].append(r)
            print(
                f"cache={cache} ({r['cache']}): {r['wall_s']:.1f} s, {r['cpu_s']:.1f} CPU-s, "
                f"ft {r['phase_wall_s'].get('ft', 0):.1f} s",
                flush=True,
            )
    difference = max(
        largest_weight_difference(a["workdir"], b["workdir"])
        for a, b in zip(runs["none"], runs["auto"], strict=True)
    )
    summary = {
        cache: {
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "cpu_s": statistics.mean(r["cpu_s"] for r in rs),
            "ft_s": statistics.mean(r["phase_wall_s"].get("ft", 0.0) for r in rs),
        }
        for cache, rs in runs.items()
    }
    ratio = {k: round(summary["auto"][k] / summary["none"][k], 3) for k in summary["auto"]}
    print(
        f"auto / none: wall {ratio['wall_s']:.3f}x, CPU-s {ratio['cpu_s']:.3f}x, "
        f"ft {ratio['ft_s']:.3f}x; trained weights' largest difference {difference}"
    )
    path = _common.write(
        "cache_quick"
        if args.quick
        else "cache"
        if args.backbone == "mobilenet_025"
        else f"cache_{args.backbone}",
        {
            "machine": _common.machine(),
            "backbone": "tiny" if args.quick else args.backbone,
            "runs": runs,
            "mean": summary,
            "auto_over_none": ratio,
            "weights_max_abs_difference": difference,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
