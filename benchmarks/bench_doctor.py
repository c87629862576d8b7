"""How fast is the data doctor, how well does it find planted defects, what does it find for real?

    python benchmarks/bench_doctor.py            # the whole shared flower set, 8 planted seeds
    python benchmarks/bench_doctor.py --quick    # 300 photos, 1 seed: a smoke run
    python benchmarks/bench_doctor.py --backbone=efficientnet_lite0 --weights=lite0.weights.h5
                                                 # planted defects on Lite0's features:
                                                 # the flowers and scikit-learn's digits

Everything runs through the package, as `python -m tl_keras.doctor` does
(`tl_keras.doctor.workflow.doctor_workdir`): the pipeline, content hashes, the feature pass of
the real ImageNet MobileNet-0.25 from ../shared, thumbnails, `diagnose`, the report.

* On the whole flower set (3,439 photos) at 128 px (configs/flowers.toml's size), split as
  `--val_fraction=0.2 --seed=0` splits it: the doctor's wall time with the features computed,
  then again with them cached (each step's seconds, and the command itself end to end in a
  fresh process, TensorFlow's import included); what it finds: duplicate groups (those across
  train / val first) and how many of the pairs known by eye (tests/doctor_photos.py) they hold,
  the label check, the outliers.
* Over 8 seeds, on 60 photos per class at 96 px with planted defects (see
  tests/doctor_photos.py): recall of planted copies, duplicate groups beyond the planted,
  precision@k of planted label flips, likely label errors that are planted flips, planted
  outliers flagged.

With `--backbone=efficientnet_lite0` (weights from `python -m tl_keras.weights
--backbone=efficientnet_lite0 --out=FILE`) only the planted-defect runs, on two sources: the
flowers (128 px) and scikit-learn's digits (32 px PNGs read at 64 px, bench_recipe.py's size),
each image's features computed once by the doctor's own feature pass (benchmarks/doctor_sets.py)
and `diagnose` run per seed with the default thresholds; the probe's accuracy and whether the
doctor calls its label check reliable are reported per seed. Writes doctor_lite0.json.

Writes benchmarks/results/doctor.json with the machine's load before and after, and whether
BLAS was limited to one thread for the probe (threadpoolctl; on a busy 2-core machine one thread
ran `diagnose` up to 3x faster than OpenBLAS's default).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import _common
import numpy as np

sys.path.insert(0, str(_common.REPO / "tests"))  # the photo and planting helper lives with tests

import doctor_photos as photos_lib  # noqa: E402

CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 photos and 1 seed: a smoke run")
    ap.add_argument("--seeds", type=int, default=8, help="planted-defect seeds")
    ap.add_argument("--per_class", type=int, default=60, help="photos per class, planted runs")
    ap.add_argument("--image_size", type=int, default=128, help="whole-set input size")
    ap.add_argument(
        "--backbone",
        default="mobilenet",
        choices=("mobilenet", "efficientnet_lite0"),
        help="mobilenet: MobileNet-0.25 from ../shared (the whole set and planted runs); "
        "efficientnet_lite0: planted runs on the flowers and the digits (needs --weights)",
    )
    ap.add_argument("--weights", default=None, help="Lite0's converted weights file")
    ap.add_argument("--data", default="flowers,digits", help="Lite0: the planted sources")
    ap.add_argument("--first_seed", type=int, default=0, help="Lite0: seeds first_seed, ...")
    return ap.parse_args(argv)


def whole_set(data_dir: str, workdir: str, image_size: int) -> dict:
    from tl_keras.config import Config
    from tl_keras.doctor.workflow import doctor_workdir

    cfg = Config(
        data_dir=data_dir,
        backbone="mobilenet",
        alpha=0.25,
        weights=str(_common.WEIGHTS),
        image_size=image_size,
        batch_size=64,
    )
    runs = {}
    for name in ("features_computed", "features_cached"):
        start = time.perf_counter()
        result = doctor_workdir(cfg, workdir)
        runs[name] = {
            "wall_s": round(time.perf_counter() - start, 2),
            "steps_s": {k: round(v, 2) for k, v in result.seconds.items()},
        }
    runs["command_cached_s"] = command_time(data_dir, workdir, image_size)
    return {
        "images": result.report["num_images"],
        "image_size": image_size,
        "timing": runs,
        "findings": findings(result.report),
    }


def command_time(data_dir: str, workdir: str, image_size: int) -> float:
    """`python -m tl_keras.doctor` end to end in a fresh process, with the features cached."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tl_keras.doctor", f"--data_dir={data_dir}",
         "--backbone=mobilenet", "--alpha=0.25", f"--weights={_common.WEIGHTS}",
         f"--image_size={image_size}", "--batch_size=64", f"--workdir={workdir}"],
        cwd=_common.REPO, check=True, capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    return round(time.perf_counter() - start, 2)


def findings(report: dict) -> dict:
    errors = report["label_errors"]
    groups = report["duplicates"]["groups"]
    names = [{m["path"].split("flowers5/")[-1] for m in g["members"]} for g in groups]
    known = {
        kind: sum(any(set(pair) <= n for n in names) for pair in pairs)
        for kind, pairs in (
            ("copies", photos_lib.KNOWN_DUPLICATES),
            ("edited_copies", photos_lib.KNOWN_EDITED_COPIES),
            ("same_scene", photos_lib.KNOWN_SAME_SCENE),
        )
    }
    return {
        "summary": report["summary"],
        "known_pairs_found": known,
        "duplicate_groups": [
            {
                "kind": g["kind"],
                "evidence": g["evidence"],
                "splits": g["splits"],
                "min_cosine": g["min_cosine"],
                "files": [m["path"].split("flowers5/")[-1] for m in g["members"]],
            }
            for g in groups
        ],
        "probe_accuracy": errors.get("probe_accuracy"),
        "label_check_reliable": errors.get("reliable"),
        "likely_label_errors": errors["num_likely"],
        "top_suspects": [
            {k: s[k] for k in ("path", "split", "label", "suggested", "p_given", "likely")}
            for s in errors["suspects"][:15]
        ],
        "outliers": [
            {k: o[k] for k in ("path", "label", "score", "isolation")}
            for o in report["outliers"]["items"]
        ],
        "balance": {"ratio": report["balance"]["ratio"], "totals": report["balance"]["totals"]},
    }


def planted_runs(seeds: int, per_class: int, scratch: str) -> dict:
    rows = []
    for seed in range(seeds):
        photos = photos_lib.sample(
            _common.FLOWERS,
            dict.fromkeys(CLASSES, per_class),
            seed=seed,
            exclude=photos_lib.REAL_DUPLICATE_FILES,
        )
        photos_lib.plant(photos, exact=8, resized=18, flips=12, outliers=3, seed=seed)
        root = os.path.join(scratch, f"planted-{seed}")
        report = photos_lib.examine(
            photos, os.path.join(root, "data"), os.path.join(root, "work"), str(_common.WEIGHTS)
        )
        rows.append(score_planted(photos, report))
        print(f"seed {seed}: {rows[-1]}", flush=True)
    keys = rows[0].keys()
    return {
        "per_class": per_class,
        "image_size": photos_lib.IMAGE_SIZE,
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


def quick_set(scratch: str) -> str:
    """300 photos (60 per class) as one image-folder tree, for --quick."""
    files = photos_lib.class_files(_common.FLOWERS)
    for name, chosen in files.items():
        os.makedirs(os.path.join(scratch, "quick", name), exist_ok=True)
        for f in chosen[:60]:
            with open(os.path.join(scratch, "quick", f), "wb") as out:
                out.write((_common.FLOWERS / f).read_bytes())
    return os.path.join(scratch, "quick")


def lite0_planted(args, scratch: str) -> dict:
    """Planted-defect runs on Lite0's features, per source: scores, probe accuracy, per seed."""
    import doctor_sets

    from tl_keras.doctor import analysis

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = {}
    for source in args.data.split(","):
        if source == "flowers":
            root, exclude = str(_common.FLOWERS), photos_lib.REAL_DUPLICATE_FILES
        else:
            root, exclude = doctor_sets.digit_tree(os.path.join(scratch, "digits")), frozenset()
        sets = doctor_sets.planted_sets(root, seeds, args.per_class, exclude=exclude)
        store = doctor_sets.feature_store(
            [d for photos in sets for d in photos.data],
            scratch=os.path.join(scratch, f"store-{source}"),
            config_fields={
                "backbone": args.backbone,
                "weights": args.weights,
                "image_size": doctor_sets.SIZES[source],
            },
        )
        rows, details = [], []
        for seed, photos in zip(seeds, sets, strict=True):
            feats, thumbs = doctor_sets.seed_arrays(photos, store)
            report = analysis.diagnose(
                feats,
                photos.labels,
                splits=photos.splits,
                paths=photos.paths,
                hashes=photos.hashes,
                class_names=photos.class_names,
                thumbnails=thumbs,
                seed=0,  # the config's default seed, as `python -m tl_keras.doctor` runs it
            )
            errors = report["label_errors"]
            row = {
                "seed": seed,
                **score_planted(photos, report),
                "probe_accuracy": errors["probe_accuracy"],
                "label_check_reliable": errors["reliable"],
            }
            rows.append(row)
            details.append(
                {
                    "seed": seed,
                    **outlier_scores(photos, feats, thumbs),
                    **other_groups(photos, report),
                }
            )
            print(f"{source} seed {seed}: {row}", flush=True)
        out[source] = {
            "images_per_seed": len(sets[0].data),
            "per_class": args.per_class,
            "image_size": store["image_size"],
            "distinct_images": len(store["row"]),
            "feature_pass_s": store["seconds"],
            "seeds": rows,
            "mean": _stat(rows, np.mean),
            "min": _stat(rows, np.min),
            "outlier_z_sweep": outlier_sweep(details),
            "details": details,
        }
    return out


def outlier_scores(photos, feats, thumbs) -> dict:
    """Every image's outlier score (the doctor's, at any threshold): the planted outliers', and
    the 5 highest of the rest, for choosing `outlier_z` from planted defects."""
    from tl_keras.doctor import analysis
    from tl_keras.doctor.thresholds import Thresholds

    report = analysis.diagnose(
        feats, photos.labels, splits=photos.splits, paths=photos.paths, hashes=photos.hashes,
        class_names=photos.class_names, thumbnails=thumbs, seed=0, deferred=("label_errors",),
        thresholds=Thresholds(outlier_z=1e-6, max_listed=len(photos.labels)),
    )  # fmt: skip
    planted = {photos.paths[i] for i in photos.outliers}
    items = report["outliers"]["items"]
    return {
        "planted_outlier_scores": sorted(o["score"] for o in items if o["path"] in planted),
        "top_other_scores": sorted(o["score"] for o in items if o["path"] not in planted)[::-1][:5],
    }


def other_groups(photos, report) -> dict:
    """Duplicate groups beyond the planted, by the evidence that formed them."""
    planted = {photos.paths[k] for pair in photos.copies for k in pair}
    evidence = collections.Counter(
        "+".join(g["evidence"])
        for g in report["duplicates"]["groups"]
        if not {m["path"] for m in g["members"]} & planted
    )
    return {"other_groups_by_evidence": dict(sorted(evidence.items()))}


def outlier_sweep(details: list[dict], grid=(2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0)) -> dict:
    """Planted outliers flagged and other images flagged (of the top 5 kept), summed over the
    seeds, at each candidate `outlier_z`."""
    return {
        str(z): {
            "planted_flagged": sum(
                sum(s >= z for s in d["planted_outlier_scores"]) for d in details
            ),
            "others_flagged_of_top5": sum(
                sum(s >= z for s in d["top_other_scores"]) for d in details
            ),
        }
        for z in grid
    }


def _stat(rows: list[dict], fn) -> dict:
    keys = [k for k in rows[0] if k != "seed"]
    return {k: round(float(fn([float(r[k]) for r in rows])), 3) for k in keys}


def lite0_main(args) -> int:
    if not args.weights or not os.path.isfile(args.weights):
        print(
            "--backbone=efficientnet_lite0 needs --weights=FILE: "
            "python -m tl_keras.weights --backbone=efficientnet_lite0 --out=FILE",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_doctor-lite0-") as scratch:
        planted = lite0_planted(args, scratch)
    import doctor_sets

    from tl_keras.doctor.thresholds import Thresholds

    payload = {
        "machine": _common.machine(),
        "backbone": args.backbone,
        "planted": dict(doctor_sets.PLANTED),
        "thresholds": dataclasses.asdict(Thresholds()),
        "sources": planted,
    }
    name = "doctor_lite0" if args.first_seed == 0 else f"doctor_lite0_seeds{args.first_seed}"
    path = _common.write(name, payload)
    for source, result in planted.items():
        print(f"{source}: mean over {args.seeds} seeds {result['mean']}")
        print(f"{source}: worst seed {result['min']}")
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.backbone != "mobilenet":
        return lite0_main(args)
    if not (_common.FLOWERS.is_dir() and _common.WEIGHTS.is_file()):
        print(f"needs the shared flowers and weights under {_common.SHARED}", file=sys.stderr)
        return 2
    from tl_keras.doctor.linear_probe import one_blas_thread

    seeds = 1 if args.quick else args.seeds
    with tempfile.TemporaryDirectory(prefix="bench_doctor-") as scratch:
        data_dir = quick_set(scratch) if args.quick else str(_common.FLOWERS)
        size = 96 if args.quick else args.image_size
        full = whole_set(data_dir, os.path.join(scratch, "whole"), size)
        planted = planted_runs(seeds, 40 if args.quick else args.per_class, scratch)
    payload = {
        "machine": _common.machine(),
        "blas_one_thread_for_the_probe": type(one_blas_thread()).__name__ != "nullcontext",
        "quick": args.quick,
        "whole_set": full,
        "planted": planted,
    }
    path = _common.write("doctor", payload)
    t = full["timing"]
    print(
        f"\n{full['images']} photos at {full['image_size']} px: doctor "
        f"{t['features_computed']['wall_s']:.1f} s computing the features, "
        f"{t['features_cached']['wall_s']:.1f} s with them cached (steps "
        f"{t['features_cached']['steps_s']}); the command end to end, cached: "
        f"{t['command_cached_s']:.1f} s"
    )
    print(full["findings"]["summary"])
    print(f"known pairs found: {full['findings']['known_pairs_found']}")
    print(f"planted, mean over {seeds} seed(s): {planted['mean']}")
    print(f"planted, worst seed: {planted['min']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
