"""What the speed benchmarks share: paths, the shared material, machine facts, JSON results."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TL_KERAS_SHARED", REPO.parent / "shared"))
FLOWERS = SHARED / "data" / "flowers5"
WEIGHTS = SHARED / "weights" / "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
# Tests point this elsewhere, so a smoke run never overwrites the measured figures.
RESULTS = pathlib.Path(os.environ.get("TL_KERAS_BENCH_RESULTS", REPO / "benchmarks" / "results"))

sys.path.insert(0, str(REPO))
_LOAD_AT_START = os.getloadavg()  # read when a benchmark starts, before it loads the machine


def machine(devices: bool = True) -> dict:
    """What the figures were measured on, and how busy it was. The versions are the installed
    packages'; `devices=False` leaves out the GPUs, whose list needs TensorFlow imported (seconds
    of CPU in a process that only starts runs)."""
    from importlib import metadata

    out = {
        "python": platform.python_version(),
        "tensorflow": metadata.version("tensorflow"),
        "keras": metadata.version("keras"),
        "cpus": os.cpu_count(),
    }
    if devices:
        import tensorflow as tf

        out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    out.update(load_average_before=_LOAD_AT_START, date=time.strftime("%Y-%m-%d %H:%M"))
    return out


def tiny_config(**settings):
    """A quick mode's `Config`: the package's `tiny` test base, random weights, 32 px, 1 + 1
    epochs on 3 x 8 synthetic shapes in batches of 8, with `settings` added or replaced."""
    from tl_keras import Config

    values = dict(
        data_dir="synthetic",
        synthetic_images_per_class=8,
        backbone="tiny",
        weights="none",
        image_size=32,
        batch_size=8,
        epochs_fe=1,
        epochs_ft=1,
    )
    return Config(**{**values, **settings})


def write(name: str, payload: dict) -> pathlib.Path:
    """Writes benchmarks/results/NAME.json (atomically) and returns its path."""
    from tl_keras import io

    payload = {**payload, "load_average_after": os.getloadavg()}
    path = RESULTS / f"{name}.json"
    io.atomic_write_text(str(path), json.dumps(payload, indent=2) + "\n")
    return path


def flower_subset(folder: str | os.PathLike, per_class: int) -> str:
    """The first `per_class` shared flower photos of each class (by name), linked into
    folder/CLASS/: a smoke run's small copy of the set. Returns the folder."""
    root = pathlib.Path(folder)
    for cls in sorted(os.listdir(FLOWERS)):
        (root / cls).mkdir(parents=True)
        for name in sorted(os.listdir(FLOWERS / cls))[:per_class]:
            (root / cls / name).symlink_to(FLOWERS / cls / name)
    return str(root)


def flowers_or_exit() -> tuple[str, str]:
    """The shared flower photos and MobileNet-0.25 weights; exits with a message without them."""
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        sys.exit(f"this benchmark needs ../shared (flowers at {FLOWERS}, weights at {WEIGHTS})")
    return str(FLOWERS), str(WEIGHTS)
