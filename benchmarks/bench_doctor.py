"""How fast is the data doctor, how well does it find planted defects, what does it find for real?

    python benchmarks/bench_doctor.py            # the whole shared flower set, 8 planted seeds
    python benchmarks/bench_doctor.py --quick    # 300 photos, 1 seed: a smoke run

On ../shared's flowers (3,439 photos) with the real ImageNet MobileNet-0.25 at 96 px:

* the time to compute the features (decode + forward pass), apart from the time `diagnose` takes
  given them (best and median of 3 rounds, wall clock and CPU): the doctor runs on cached
  features, so the second figure is what it adds to a run;
* what `diagnose` finds on the real, unplanted set, split as `--val_fraction=0.2 --seed=0`
  would split it (`tl_keras.data.stratified_split`): duplicate groups (those across train / val
  first), the top label-error suspects, the outliers;
* over 8 seeds, on 60 photos per class with planted defects (see tests/doctor_photos.py):
  recall of planted copies, duplicate groups beyond the planted, precision@k of planted label
  flips, how many likely label errors are planted flips, planted outliers flagged.

Writes benchmarks/results/doctor.json. The times depend on the machine and on whatever else runs
on it: the JSON records the load average before and after, and OPENBLAS_NUM_THREADS (on a busy
2-core machine `OPENBLAS_NUM_THREADS=1 python benchmarks/bench_doctor.py` runs diagnose about 3x
faster than OpenBLAS's default threads).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

import _common
import numpy as np

sys.path.insert(0, str(_common.REPO / "tests"))  # the photo and planting helper lives with tests

import doctor_photos as photos_lib  # noqa: E402

from tl_keras.doctor.analysis import diagnose  # noqa: E402

CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 photos and 1 seed: a smoke run")
    ap.add_argument("--seeds", type=int, default=8, help="planted-defect seeds")
    ap.add_argument("--per_class", type=int, default=60, help="photos per class, planted runs")
    ap.add_argument("--rounds", type=int, default=3, help="timed diagnose rounds")
    return ap.parse_args(argv)


def load_set(limit: int | None) -> tuple[list[str], np.ndarray, list[bytes]]:
    files = photos_lib.class_files(_common.FLOWERS)
    paths, labels = [], []
    for label, name in enumerate(files):
        chosen = files[name] if limit is None else files[name][: limit // len(files)]
        paths += chosen
        labels += [label] * len(chosen)
    data = [(_common.FLOWERS / p).read_bytes() for p in paths]
    return paths, np.array(labels), data


def whole_set(model, limit: int | None, rounds: int) -> dict:
    from tl_keras.data.pipeline import stratified_split

    start = time.perf_counter()
    paths, labels, data = load_set(limit)
    pixels = photos_lib.decode(data)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    feats = photos_lib.features(model, pixels)
    forward_s = time.perf_counter() - start
    hashes = [hashlib.sha256(d).hexdigest() for d in data]
    _, val_idx = stratified_split(labels, 0.2, seed=0)
    splits = np.full(len(labels), "train", dtype=object)
    splits[val_idx] = "val"
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        report = diagnose(
            feats,
            labels,
            splits=splits.tolist(),
            paths=paths,
            hashes=hashes,
            class_names=list(photos_lib.class_files(_common.FLOWERS)),
        )
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "images": len(paths),
        "features": {
            "decode_s": round(decode_s, 2),
            "forward_s": round(forward_s, 2),
            "image_size": photos_lib.IMAGE_SIZE,
        },
        "diagnose": {
            "wall_s": [round(w, 2) for w in walls],
            "cpu_s": [round(c, 2) for c in cpus],
            "best_wall_s": round(min(walls), 2),
            "median_wall_s": round(statistics.median(walls), 2),
        },
        "findings": findings(report),
    }


def findings(report: dict) -> dict:
    errors = report["label_errors"]
    return {
        "summary": report["summary"],
        "duplicate_groups": [
            {
                "kind": g["kind"],
                "splits": g["splits"],
                "min_cosine": g["min_cosine"],
                "files": [m["path"] for m in g["members"]],
            }
            for g in report["duplicates"]["groups"]
        ],
        "probe_accuracy": errors.get("probe_accuracy"),
        "likely_label_errors": errors["num_likely"],
        "top_suspects": [
            {k: s[k] for k in ("path", "split", "label", "suggested", "p_given", "likely")}
            for s in errors["suspects"][:15]
        ],
        "outliers": [
            {k: o[k] for k in ("path", "label", "score", "centroid_angle")}
            for o in report["outliers"]["items"]
        ],
        "balance": {"ratio": report["balance"]["ratio"], "totals": report["balance"]["totals"]},
    }


def planted_runs(model, seeds: int, per_class: int) -> dict:
    rows = []
    for seed in range(seeds):
        photos = photos_lib.sample(
            _common.FLOWERS,
            dict.fromkeys(CLASSES, per_class),
            seed=seed,
            exclude=photos_lib.REAL_DUPLICATE_FILES,
        )
        photos_lib.plant(photos, exact=8, resized=18, flips=12, outliers=3, seed=seed)
        feats = photos_lib.features(model, photos_lib.decode(photos.data))
        report = diagnose(
            feats,
            np.array(photos.labels),
            splits=photos.splits,
            paths=photos.paths,
            hashes=photos.hashes,
            class_names=photos.class_names,
        )
        rows.append(score_planted(photos, report))
        print(f"seed {seed}: {rows[-1]}", flush=True)
    keys = rows[0].keys()
    return {
        "per_class": per_class,
        "planted": {"exact": 8, "resized": 18, "flips": 12, "outliers": 3},
        "seeds": rows,
        "mean": {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys},
        "min": {k: round(float(np.min([r[k] for r in rows])), 3) for k in keys},
    }


def score_planted(photos, report) -> dict:
    group_of = {
        m["path"]: k for k, g in enumerate(report["duplicates"]["groups"]) for m in g["members"]
    }
    found = [
        photos.paths[i] in group_of and group_of[photos.paths[i]] == group_of.get(photos.paths[j])
        for i, j in photos.copies
    ]
    planted_files = {photos.paths[k] for pair in photos.copies for k in pair}
    extra = [
        g
        for g in report["duplicates"]["groups"]
        if not {m["path"] for m in g["members"]} & planted_files
    ]
    flips = {photos.paths[i] for i in photos.flips}
    suspects = report["label_errors"]["suspects"]
    likely = [s for s in suspects if s["likely"]]
    outliers = {o["path"] for o in report["outliers"]["items"]}
    planted_outliers = {photos.paths[i] for i in photos.outliers}
    return {
        "duplicate_recall": round(float(np.mean(found)), 3),
        "other_duplicate_groups": len(extra),
        "flip_precision_at_k": round(
            sum(s["path"] in flips for s in suspects[: len(flips)]) / len(flips), 3
        ),
        "likely_label_errors": len(likely),
        "likely_that_are_flips": sum(s["path"] in flips for s in likely),
        "planted_outliers_flagged": len(outliers & planted_outliers),
        "other_outliers": len(outliers - planted_outliers),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (_common.FLOWERS.is_dir() and _common.WEIGHTS.is_file()):
        print(f"needs the shared flowers and weights under {_common.SHARED}", file=sys.stderr)
        return 2
    seeds = 1 if args.quick else args.seeds
    start = time.perf_counter()
    model = photos_lib.feature_extractor(str(_common.WEIGHTS))
    build_s = time.perf_counter() - start
    full = whole_set(model, 300 if args.quick else None, 1 if args.quick else args.rounds)
    full["features"]["model_build_s"] = round(build_s, 2)
    planted = planted_runs(model, seeds, 40 if args.quick else args.per_class)
    payload = {
        "machine": _common.machine(),
        # OpenBLAS's threads fight over 2 busy cores on the probe's thin products: with
        # OPENBLAS_NUM_THREADS=1 diagnose ran about 3x faster here. Recorded so figures compare.
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "quick": args.quick,
        "whole_set": full,
        "planted": planted,
    }
    path = _common.write("doctor", payload)
    f, d = full["features"], full["diagnose"]
    print(
        f"\n{full['images']} photos: features {f['decode_s'] + f['forward_s']:.1f} s "
        f"(decode {f['decode_s']:.1f} s, forward {f['forward_s']:.1f} s at {f['image_size']} px, "
        f"model build {f['model_build_s']:.1f} s); diagnose best {d['best_wall_s']:.2f} s, "
        f"median {d['median_wall_s']:.2f} s (CPU {min(d['cpu_s']):.2f} s)"
    )
    print(full["findings"]["summary"])
    print(f"planted, mean over {seeds} seed(s): {planted['mean']}")
    print(f"planted, worst seed: {planted['min']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
