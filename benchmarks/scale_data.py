"""Data for the scale benchmark: N generated JPEGs as a folder, and the same images prepared by TFDS.

    python benchmarks/scale_data.py --sizes 2000 16000 --out /tmp/scale

For each N writes, under OUT:

* `folder-N/<class>/<class>_<i>.jpg`: N JPEGs of 128 px in 5 balanced classes, named as
  `tf_flowers`'s classes (dandelion, daisy, tulips, sunflowers, roses). Each class is a shape in
  its own colour range on a noisy gradient (overlapping colours, so it is not trivial); image i
  is a pure function of (seed, i), so any number of worker processes writes the same bytes.
  A `manifest.json`, written last, makes a second call with the same arguments a no-op.
* `tfds-N/tf_flowers/3.0.1/`: the same N images as a prepared TFDS data set (`--tfds`), made by
  TFDS's own `tf_flowers` builder fed from a tar of the folder (`tests/tfds_local.py` replaces
  only the download), so it is read with `data_dir=tfds:tf_flowers --tfds_data_dir=OUT/tfds-N`,
  exactly as a user's prepared set is. The builder, not `tfds.folder_dataset.ImageFolder`:
  ImageFolder writes nothing (it reads the image files at `as_dataset` time), so it would
  measure the folder path twice; and a builder of our own would need registering in every
  process that reads it, while `tf_flowers` is loadable by name.

Prints a table (seconds to generate, to prepare, and the disk size of each) and writes
benchmarks/results/scale_data.json (rows of sets made now; a set already complete is reused, and
`--fresh` makes it again). Used by benchmarks/bench_scale.py.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import _common
import numpy as np

sys.path.insert(0, str(_common.REPO / "tests"))  # tfds_local: TFDS's builders on local files

# tf_flowers's class names, so the folder feeds tf_flowers's own builder unchanged.
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
# Typical RGB colour of each class's shape; each image's colour varies by up to +-60 a channel.
_COLOURS = ((230, 230, 230), (230, 200, 40), (200, 40, 70), (240, 160, 30), (170, 60, 200))
MANIFEST = "manifest.json"
_CHUNK = 250  # images a worker task writes: large enough to amortise the task, small to balance


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.mgrid[0:size, 0:size].astype(np.float32))


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int, seed: int) -> np.ndarray:
    """16 noise fields (float32, sd 1) each image picks from and shifts: drawing fresh normal noise
    per image was two thirds of the time, and a fixed bank keeps images a pure function of seed."""
    rng = np.random.default_rng([seed, 2**31])
    return rng.standard_normal(size=(16, size, size, 3), dtype=np.float32)


def draw(i: int, *, size: int = 128, seed: int = 0) -> tuple[int, np.ndarray]:
    """Image i: (its class, uint8 size x size x 3), a pure function of (seed, i, size)."""
    k = i % len(CLASSES)
    rng = np.random.default_rng([seed, i])
    yy, xx = _grid(size)
    j, dy0, dx0 = rng.integers(16), rng.integers(size), rng.integers(size)
    noise = np.roll(_noise_bank(size, seed)[j], (dy0, dx0), axis=(0, 1))
    # Background: a random linear gradient plus mild noise (JPEGs of photo-like size, ~5 KB).
    a, b = rng.uniform(-0.4, 0.4, size=2).astype(np.float32)
    base = rng.uniform(20, 120, size=3).astype(np.float32)
    img = base + (a * xx + b * yy)[..., None] + 6 * noise
    r = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    if k == 0:  # disc
        mask = dx**2 + dy**2 <= r**2
    elif k == 1:  # square
        mask = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    elif k == 2:  # triangle pointing up
        mask = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    elif k == 3:  # ring
        d2 = dx**2 + dy**2
        mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    else:  # cross
        mask = ((np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)) | (
            (np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r)
        )
    colour = np.asarray(_COLOURS[k], np.float32) + rng.uniform(-60, 60, size=3).astype(np.float32)
    img[mask] = colour + 1.3 * noise[mask]  # the shape keeps some texture (sd about 8)
    return k, np.clip(img, 0, 255).astype(np.uint8)


def _path(root: pathlib.Path, i: int, k: int) -> pathlib.Path:
    return root / CLASSES[k] / f"{CLASSES[k]}_{i:06d}.jpg"


def _write_chunk(job: tuple[str, int, int, int, int, int]) -> int:
    """Writes images [start, stop) as JPEGs; returns the bytes written."""
    from PIL import Image

    root, start, stop, size, seed, quality = job
    written = 0
    for i in range(start, stop):
        k, pixels = draw(i, size=size, seed=seed)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
        path = _path(pathlib.Path(root), i, k)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)  # never a half-written .jpg, even if interrupted
        written += buf.tell()
    return written


def make_folder(
    out: os.PathLike | str,
    n: int,
    *,
    size: int = 128,
    seed: int = 0,
    quality: int = 90,
    workers: int = 2,
) -> pathlib.Path:
    """Writes N JPEGs in class folders under `out` (once; reused when already complete).

    Args:
      out: the folder (an image-folder tree, ready as `data_dir`).
      n: number of images; class i % 5, so classes are balanced.
      size: side in pixels.
      seed: drawing seed; the same arguments always give the same bytes.
      quality: JPEG quality.
      workers: processes drawing and encoding in parallel.

    Returns:
      `out`.
    """
    out = pathlib.Path(out)
    wanted = {"n": n, "size": size, "seed": seed, "quality": quality, "classes": list(CLASSES)}
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return out
    if out.exists():
        shutil.rmtree(out)  # other arguments, or an interrupted run: start clean
    for name in CLASSES:
        (out / name).mkdir(parents=True)
    jobs = [
        (str(out), start, min(start + _CHUNK, n), size, seed, quality)
        for start in range(0, n, _CHUNK)
    ]
    if workers > 1:
        # spawn, not fork: the parent may have TensorFlow's threads running (forking those can
        # deadlock); the workers import numpy and PIL only.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_chunk, jobs):
                pass
    else:
        for job in jobs:
            _write_chunk(job)
    manifest.write_text(json.dumps(wanted) + "\n")  # last: its presence means complete
    return out


def make_tfds(
    folder: os.PathLike | str, data_dir: os.PathLike | str, *, num_shards: int | None = None
) -> pathlib.Path:
    """Prepares `folder`'s images as TFDS's `tf_flowers` under `data_dir` (once).

    TFDS's own builder reads a tar of the folder (laid out as the `flower_photos` archive) where
    it would read its download: its generator, encoders, writer and shards are all TFDS's.

    Args:
      folder: a tree from `make_folder`.
      data_dir: the tfds_data_dir to prepare into.
      num_shards: None lets TFDS choose by size, as it does for a user.

    Returns:
      The prepared version folder (`data_dir/tf_flowers/3.0.1`).
    """
    import tfds_local

    data_dir = pathlib.Path(data_dir)
    version_dir = data_dir / "tf_flowers" / "3.0.1"
    source = json.loads((pathlib.Path(folder) / MANIFEST).read_text())
    stamp = data_dir / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == source and version_dir.is_dir():
        return version_dir
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    tar = data_dir / "flower_photos.tar"  # uncompressed: gzip would only cost time here
    tfds_local.pack_archive(folder, tar, arcname="flower_photos")
    try:
        tfds_local.prepare_tf_flowers(data_dir, tar, num_shards=num_shards)
    finally:
        tar.unlink()
        shutil.rmtree(data_dir / "downloads", ignore_errors=True)
    stamp.write_text(json.dumps(source) + "\n")
    return version_dir


def disk_mib(path: os.PathLike | str) -> float:
    """Space the tree takes on disk (du: blocks, not file lengths), in MiB."""
    kib = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(kib.stdout.split()[0]) / 1024


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the drawing workers): on a
    shared machine a steadier measure of the work than wall time."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _complete(folder: pathlib.Path) -> bool:
    return (folder / MANIFEST).is_file()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 16000], help="images per set")
    ap.add_argument("--out", default=os.path.join(os.getcwd(), "scale_data"), help="where")
    ap.add_argument("--workers", type=int, default=2, help="processes drawing the JPEGs")
    ap.add_argument("--no_tfds", action="store_true", help="the folders only")
    ap.add_argument("--tfds_shards", type=int, default=None, help="default: TFDS chooses")
    ap.add_argument("--fresh", action="store_true", help="regenerate sets already complete")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    if not args.no_tfds:  # TensorFlow and the builder loaded before the clock starts
        import tensorflow as tf
        import tensorflow_datasets as tfds

        tf.constant(0)
        tfds.builder_cls("tf_flowers")
    rows = {}
    for n in args.sizes:
        folder, tfds_dir = out / f"folder-{n}", out / f"tfds-{n}"
        if args.fresh:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(tfds_dir, ignore_errors=True)
        row = {"reused": _complete(folder), "load_before": os.getloadavg()[0]}
        start, cpu = time.perf_counter(), _cpu_s()
        make_folder(folder, n, seed=args.seed, workers=args.workers)
        row.update(folder_s=time.perf_counter() - start, folder_cpu_s=_cpu_s() - cpu)
        row["folder_mib"] = disk_mib(folder)
        if not args.no_tfds:
            start, cpu = time.perf_counter(), _cpu_s()
            version_dir = make_tfds(folder, tfds_dir, num_shards=args.tfds_shards)
            row.update(tfds_s=time.perf_counter() - start, tfds_cpu_s=_cpu_s() - cpu)
            row["tfds_mib"] = disk_mib(tfds_dir)
            row["tfds_shards"] = len(list(version_dir.glob("tf_flowers-train.tfrecord-*")))
        row["date"] = time.strftime("%Y-%m-%d %H:%M")
        rows[str(n)] = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
        print(f"{n}: {rows[str(n)]}", flush=True)
    # Rows of sizes not made now are kept: 128k is generated rarely, and each row has its date.
    path = _common.RESULTS / "scale_data.json"
    kept = json.loads(path.read_text())["results"] if path.is_file() else {}
    measured = {n: r for n, r in rows.items() if not r["reused"]}
    results = dict(sorted({**kept, **measured}.items(), key=lambda kv: int(kv[0])))
    _common.write("scale_data", {"machine": _common.machine(), "out": str(out), "results": results})
    print(
        "| images | folder: generate (CPU) | folder: disk | TFDS: prepare (CPU) | TFDS: disk | shards |"
    )
    print("|---|---|---|---|---|---|")
    nan = float("nan")
    for n, r in rows.items():
        again = " (existing)" if r["reused"] else ""
        print(
            f"| {int(n):,} | {r['folder_s']:.1f} s ({r['folder_cpu_s']:.1f} s){again} | "
            f"{r['folder_mib']:.0f} MiB | {r.get('tfds_s', nan):.1f} s ({r.get('tfds_cpu_s', nan):.1f} s) | "
            f"{r.get('tfds_mib', nan):.0f} MiB | {r.get('tfds_shards', '-')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
