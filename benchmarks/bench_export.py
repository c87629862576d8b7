"""Export parity and quantisation accuracy on real photos: the figures in docs/benchmarks.md.

    python benchmarks/bench_export.py            # needs ../shared (weights and flowers)
    python benchmarks/bench_export.py --smoke    # seconds: shapes, the test backbone tiny, 32 px

Trains MobileNet (width 0.25, the shared real ImageNet weights) on the shared flower photos with
tl_keras (fe then ft, reusing the workdir when it already holds that finished run), exports it
with `tl_keras.inference.export.export_workdir` exactly as `python -m tl_keras.export` does (each artifact
parity-checked on 32 validation images), and then runs every artifact on the WHOLE validation
split against the Keras model: the largest and mean |difference| of the probabilities, the
99th percentile of each image's largest difference, top-1 agreement, and accuracy. The model
compared is the one users get (`TrainedModel.served`: the temperature fitted on validation
after training, and the run's test-time augmentation), so the table is parity extended to the
temperature; `predict_vs_artifacts` compares `predict_workdir`'s probabilities for the
validation files with each float32 artifact's, and `calibration` records the temperature with
the expected calibration error before and after it on the validation split. Writes
`benchmarks/results/export_<name>.json` (with versions and the machine's load) and prints two
Markdown tables.

The validation split is tl_keras's seeded 20% of each class; it is not a test set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TL_KERAS_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
FLOWERS = SHARED / "data" / "flowers5"
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run, to test the script")
    parser.add_argument("--workdir", default=None, help="default: runs/bench_export[_smoke]")
    parser.add_argument("--out", default=None, help="results JSON [benchmarks/results/...]")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--epochs_fe", type=int, default=5)
    parser.add_argument("--epochs_ft", type=int, default=3)
    return parser.parse_args(argv)


def config_for(args):
    from tl_keras.config import Config

    if args.smoke:
        return Config(
            data_dir="synthetic", synthetic_images_per_class=10, backbone="tiny", weights="none",
            image_size=32, batch_size=8, epochs_fe=1, epochs_ft=1, head_units=8, progress="lines",
        )  # fmt: skip
    if not (WEIGHTS.is_file() and FLOWERS.is_dir()):
        sys.exit(f"needs {WEIGHTS} and {FLOWERS} (or run with --smoke)")
    return Config(
        data_dir=str(FLOWERS), backbone="mobilenet", alpha=0.25, weights=str(WEIGHTS),
        image_size=args.image_size, batch_size=32, epochs_fe=args.epochs_fe,
        epochs_ft=args.epochs_ft, unfreeze="blocks:2", ft_lr_factor=10, progress="lines",
    )  # fmt: skip


def trained_workdir(config, workdir: str) -> float:
    """Trains unless the workdir already holds this finished run; returns the training time."""
    from tl_keras import config as config_lib
    from tl_keras import io
    from tl_keras.training.runner import train

    saved = os.path.join(workdir, "config.json")
    run_file = os.path.join(workdir, "run.json")
    if os.path.isfile(saved) and os.path.isfile(run_file):
        same = io.read_json(saved) == config_lib.to_dict(config)
        if same and set(io.read_json(run_file)["phases"]) == {"fe", "ft"}:
            print(f"reusing the finished run in {workdir}")
            return 0.0
    start = time.perf_counter()
    train(config, workdir, overwrite=True)
    return time.perf_counter() - start


def measure(model, run_artifact, images, labels, batch_size=64) -> dict:
    import numpy as np

    keras_p = np.concatenate(
        [
            np.asarray(model.predict_on_batch(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
    )
    export_p = np.concatenate(
        [run_artifact(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
    diff = np.abs(export_p.astype(np.float64) - keras_p)
    return {
        "num_images": len(images),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "p99_image_max_diff": float(np.quantile(diff.max(axis=1), 0.99)),
        "top1_agreement": float(np.mean(export_p.argmax(1) == keras_p.argmax(1))),
        "keras_accuracy": float(np.mean(keras_p.argmax(1) == labels)),
        "export_accuracy": float(np.mean(export_p.argmax(1) == labels)),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np
    import tensorflow as tf

    from tl_keras.cli.common import setup_logging
    from tl_keras.inference import export
    from tl_keras.inference.trained import load_run_data, load_trained

    setup_logging()
    name = "smoke" if args.smoke else "flowers"
    workdir = args.workdir or str(REPO / "runs" / f"bench_export_{name}")
    out = args.out or str(REPO / "benchmarks" / "results" / f"export_{name}.json")
    load_before = os.getloadavg()
    config = config_for(args)
    train_s = trained_workdir(config, workdir)

    formats = ["saved_model", "tflite", *(["onnx"] if HAS_ONNX else [])]
    timings = {}
    variants = [(None, formats), ("float16", ["tflite"]), ("dynamic", ["tflite"])]
    if config.weights == "none":
        # A random base's outputs sit near ties between classes: dynamic-range quantisation
        # moves them past its parity tolerance (see PARITY_TOLERANCES), which tells nothing.
        variants = variants[:2]
    for quantization, fmts in variants:
        start = time.perf_counter()
        manifest = export.export_workdir(workdir, formats=fmts, quantization=quantization)
        timings[quantization or "float32"] = round(time.perf_counter() - start, 1)

    trained = load_trained(workdir)
    val = load_run_data(workdir).val
    images, one_hot = (
        np.concatenate(parts) for parts in zip(*val.as_numpy_iterator(), strict=True)
    )
    labels = one_hot.argmax(1)
    export_dir = pathlib.Path(workdir) / "export"
    rows = {}
    for artifact, entry in manifest["artifacts"].items():
        run_artifact = export.load_artifact(export_dir / artifact, entry["format"])
        rows[artifact] = {
            "format": entry["format"],
            "quantization": entry["quantization"],
            "bytes": entry["bytes"],
            "tolerance": export.default_tolerance(entry["format"], entry["quantization"]).__dict__,
            "export_parity_check": entry["parity"],
            "whole_validation_split": measure(trained.served, run_artifact, images, labels),
        }
    results = {
        "command": "python benchmarks/bench_export.py" + (" --smoke" if args.smoke else ""),
        "config": {k: v for k, v in config.__dict__.items() if k not in ("progress",)},
        "train_seconds": round(train_s, 1),
        "export_seconds": timings,
        "artifacts": rows,
        "calibration": calibration(workdir, trained, images),
        "predict_vs_artifacts": predict_vs_artifacts(workdir, manifest, export_dir),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "onnxruntime": _version("onnxruntime"),
            "tf2onnx": _version("tf2onnx"),
        },
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    pathlib.Path(out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(calibration_table(results))
    print(f"\nwritten: {out}")
    return 0


def calibration(workdir: str, trained, images) -> dict:
    """The run's temperature and ECE on validation (calibration.json), and how far the model
    users get (temperature applied) is from the raw model."""
    import numpy as np

    from tl_keras import io

    report = io.read_json(os.path.join(workdir, "calibration", "calibration.json"))
    c = report["calibration"]
    raw = np.asarray(trained.model.predict_on_batch(images[:256]), np.float64)
    served = np.asarray(trained.served.predict_on_batch(images[:256]), np.float64)
    return {
        "inference": trained.inference.to_dict(),
        "fitted": report["inference"]["fitted"],
        **{k: c[k] for k in ("ece_before", "ece_after", "nll_before", "nll_after")},
        "validation": report["validation"],
        "served_vs_raw_max_abs_diff": float(np.abs(served - raw).max()),
    }


def predict_vs_artifacts(workdir: str, manifest: dict, export_dir: pathlib.Path) -> dict:
    """`predict_workdir` on the validation files against each float32 artifact, per class."""
    import numpy as np

    from tl_keras.inference import export
    from tl_keras.inference.predict import load_image, predict_workdir
    from tl_keras.inference.trained import load_run_data, run_config

    bundle = load_run_data(workdir)
    files = list(bundle.image_files["val"])[:256]  # the validation files, in the split's order
    k = len(bundle.class_names)
    rows = predict_workdir(workdir, files, top_k=k)
    predicted = np.array(
        [[dict(zip(r.labels, r.probabilities, strict=True))[c] for c in bundle.class_names]
         for r in rows]
    )  # fmt: skip
    cfg = run_config(workdir)
    size = manifest["image_size"]
    pixels = np.stack(
        [load_image(f, size, resize_mode=cfg.resize_mode, resize_method=cfg.resize_method)
         for f in files]
    )  # fmt: skip
    out = {"num_images": len(files)}
    for name, entry in manifest["artifacts"].items():
        if entry["quantization"] is None:
            got = export.load_artifact(export_dir / name, entry["format"])(pixels)
            out[name] = float(np.abs(got.astype(np.float64) - predicted).max())
    return out


def calibration_table(results: dict) -> str:
    c, p = results["calibration"], results["predict_vs_artifacts"]
    lines = [
        "",
        f"temperature {c['inference']['temperature']:.3f} ({c['fitted']}); validation ECE "
        f"{c['ece_before']:.4f} -> {c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> "
        f"{c['nll_after']:.4f}; the calibrated answer differs from the raw model by up to "
        f"{c['served_vs_raw_max_abs_diff']:.3f}",
        f"predict vs artifact, largest |difference| over {p['num_images']} validation files: "
        + ", ".join(f"{k} {v:.2g}" for k, v in p.items() if k != "num_images"),
    ]
    return "\n".join(lines)


def table(results: dict) -> str:
    lines = [
        "| artifact | size | max \\|diff\\| | mean \\|diff\\| | p99 image max | top-1 agreement "
        "| accuracy (Keras → export) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["artifacts"].items():
        m = row["whole_validation_split"]
        lines.append(
            f"| `{name}` | {row['bytes'] / 1e6:.2f} MB | {m['max_abs_diff']:.2g} | "
            f"{m['mean_abs_diff']:.2g} | {m['p99_image_max_diff']:.2g} | "
            f"{100 * m['top1_agreement']:.1f}% | {m['keras_accuracy']:.4f} → {m['export_accuracy']:.4f} |"
        )
    n = next(iter(results["artifacts"].values()))["whole_validation_split"]["num_images"]
    lines.append(f"\n{n} validation images; probabilities compared per class.")
    return "\n".join(lines)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
