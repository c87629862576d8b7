"""Real flower photos with planted defects, examined by the package's doctor (a helper module).

For the doctor's acceptance tests and `benchmarks/bench_doctor.py`. `examine` writes the photos
as an image-folder tree (train/ and val/ folders of class folders: a moved image sits in the
wrong class folder), and runs the doctor on it as `python -m tl_keras.doctor` would
(`tl_keras.doctor.workflow`): the real ImageNet MobileNet-0.25 in ../shared at 96 px, the
package's pipeline, hashes, feature pass and thumbnails. The features it computed come back in
`Photos.features` (and the thumbnails in `Photos.thumbnails`) for tests that re-run `diagnose`
with other thresholds.

Defects are planted in memory, each as it happens to real data:
* an exact copy: the same file bytes under another name;
* a resized / re-encoded copy: the photo saved again smaller or larger, or at a lower JPEG
  quality (RESIZED_COPIES: half to 1.5x the size, JPEG quality 40 to 90);
* a moved image: a photo labelled as another class (the wrong folder);
* an outlier: an image of no flower at all (noise, a drawn shape).

../shared/data/flowers5 holds real duplicates. KNOWN_DUPLICATES: the 7 pairs `diagnose` finds on
the whole set (features at 96 px), each checked by eye: the same photo at two Flickr sizes, or
uploaded twice. KNOWN_EDITED_COPIES: 8 more pairs found by correlating 16 px grey thumbnails and
checked by eye, the same photo after a colour edit or turned grey, which the features do not
bring close enough (the doctor misses them). KNOWN_SAME_SCENE: 3 pairs of the same scene
moments apart, which `diagnose` groups in smaller subsets (where their neighbourhood is
sparser): near-duplicates as far as leakage goes. The clean subsets leave all 18 pairs out, so
that "a clean set raises no duplicates" is true of the data, not an artefact of what the doctor
misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib

import numpy as np
from PIL import Image

IMAGE_SIZE = 96  # MobileNet-0.25 input; the photos are 128 px

# (resize to this many pixels or None, JPEG quality): a copy that went through another site.
RESIZED_COPIES = (
    (64, 75),
    (80, 60),
    (96, 90),
    (200, 85),
    (None, 40),
    (None, 60),
)

KNOWN_DUPLICATES = (
    ("daisy/10466290366_cc72e33532.jpg", "daisy/10994032453_ac7f8d9e2e.jpg"),
    ("daisy/10993710036_2033222c91.jpg", "daisy/10993818044_4c19b86c82.jpg"),
    ("tulip/2333321040_3960b9d67e_n.jpg", "tulip/2344751399_71620039f2_n.jpg"),
    ("tulip/7166539842_43b7e02883.jpg", "tulip/7166539842_43b7e02883_n.jpg"),
    ("tulip/7166552648_28b6dce578.jpg", "tulip/7166552648_28b6dce578_n.jpg"),
    ("tulip/7166567320_0a2beb6d42.jpg", "tulip/7166567320_0a2beb6d42_n.jpg"),
    ("tulip/7166606598_5d2cd307c3.jpg", "tulip/7166606598_5d2cd307c3_n.jpg"),
)
KNOWN_EDITED_COPIES = (
    ("daisy/33885735373_444ba02d9c_n.jpg", "daisy/34310869690_56cdc84a17_n.jpg"),
    ("dandelion/17482158576_86c5ebc2f8.jpg", "dandelion/23192507093_2e6ec77bef_n.jpg"),
    ("dandelion/4278757393_bca8415ed4_n.jpg", "dandelion/4654848357_9549351e0b_n.jpg"),
    ("rose/13279526615_a3b0059bec.jpg", "rose/13342823005_16d3df58df_n.jpg"),  # one grey
    ("rose/4608559939_3487bf3b62_n.jpg", "rose/4609168052_3d4e1d3804_n.jpg"),  # one grey
    ("sunflower/2588234269_c4bfd0d8b9_n.jpg", "sunflower/2588453601_66f2a03cca_n.jpg"),
    ("tulip/12916135413_dafcf3089e_n.jpg", "tulip/12916441224_2ed63596f8_n.jpg"),
    ("tulip/5635347336_bc1400e939_n.jpg", "tulip/5700394524_dc6f8fa9cd_n.jpg"),
)
KNOWN_SAME_SCENE = (  # moments apart or re-edited; found by `diagnose` on smaller subsets
    ("dandelion/34694280496_d457f0d7b7_n.jpg", "dandelion/34694287966_43ce068108_n.jpg"),
    ("dandelion/8689302100_be76a16ccc_n.jpg", "dandelion/8689302980_9bd2f7b9fe_n.jpg"),
    ("tulip/10163955604_ae0b830975_n.jpg", "tulip/10164073235_f29931d91e.jpg"),
)
REAL_DUPLICATE_FILES = frozenset(
    f for pair in KNOWN_DUPLICATES + KNOWN_EDITED_COPIES + KNOWN_SAME_SCENE for f in pair
)


@dataclasses.dataclass
class Photos:
    """Images (encoded bytes) with what the doctor is given about them and what was planted."""

    class_names: list[str]
    data: list[bytes] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    splits: list[str] = dataclasses.field(default_factory=list)
    paths: list[str] = dataclasses.field(default_factory=list)
    copies: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (original, copy)
    flips: list[int] = dataclasses.field(default_factory=list)
    outliers: list[int] = dataclasses.field(default_factory=list)
    features: np.ndarray | None = None  # filled in by `examine`
    thumbnails: np.ndarray | None = None
    report: dict | None = None  # the doctor's, from `examine`

    def add(self, data: bytes, label: int, split: str, path: str) -> int:
        self.data.append(data)
        self.labels.append(label)
        self.splits.append(split)
        self.paths.append(path)
        return len(self.data) - 1

    @property
    def hashes(self) -> list[str]:
        return [hashlib.sha256(d).hexdigest() for d in self.data]


def class_files(root: str | pathlib.Path) -> dict[str, list[str]]:
    """{class: sorted relative paths} of an image-folder tree."""
    root = pathlib.Path(root)
    return {
        d.name: sorted(f"{d.name}/{f.name}" for f in d.iterdir() if f.is_file())
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def sample(
    root: str | pathlib.Path,
    per_class: dict[str, int],
    *,
    seed: int,
    exclude: set[str] = frozenset(),
    val_fraction: float = 0.2,
) -> Photos:
    """A seeded subset: `per_class[name]` files of each class, `val_fraction` of them (at least
    one) in val."""
    files = class_files(root)
    rng = np.random.default_rng(seed)
    photos = Photos(class_names=list(files))
    for label, name in enumerate(files):
        pool = [f for f in files[name] if f not in exclude]
        chosen = rng.choice(pool, per_class.get(name, 0), replace=False)
        val = set(chosen[: max(1, round(val_fraction * len(chosen)))].tolist())
        for f in sorted(chosen):
            photos.add(
                (pathlib.Path(root) / f).read_bytes(), label, "val" if f in val else "train", f
            )
    return photos


def reencode(data: bytes, size: int | None, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None:
        image = image.resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def plant(
    photos: Photos, *, exact: int, resized: int, flips: int, outliers: int, seed: int
) -> Photos:
    """Plants defects into `photos` (in place; originals chosen among the unplanted images).

    Every other copy goes to the other split than its original: leakage across train / val.
    """
    rng = np.random.default_rng(seed)
    originals = rng.permutation(len(photos.data))
    used = iter(originals.tolist())
    other = {"train": "val", "val": "train"}
    for k in range(exact + resized):
        i = next(used)
        if k < exact:
            data, kind = photos.data[i], "copy"
        else:
            size, quality = RESIZED_COPIES[(k - exact) % len(RESIZED_COPIES)]
            data, kind = reencode(photos.data[i], size, quality), f"copy{size or ''}q{quality}"
        split = other[photos.splits[i]] if k % 2 else photos.splits[i]
        name = pathlib.PurePosixPath(photos.paths[i])
        j = photos.add(data, photos.labels[i], split, f"{name.parent}/{kind}_{name.name}")
        photos.copies.append((i, j))
    num_classes = len(photos.class_names)
    for _ in range(flips):
        i = next(used)
        photos.labels[i] = int((photos.labels[i] + rng.integers(1, num_classes)) % num_classes)
        photos.flips.append(i)
    for k in range(outliers):
        pixels = _not_a_flower(k, rng)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        label = int(rng.integers(num_classes))
        name = f"{photos.class_names[label]}/planted_outlier_{k}.png"
        photos.outliers.append(photos.add(buf.getvalue(), label, "train", name))
    return photos


def _not_a_flower(k: int, rng: np.random.Generator) -> np.ndarray:
    """Images of no flower: coloured noise, a flat grey card, a black disc on white."""
    size = 128
    if k % 3 == 0:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if k % 3 == 1:
        return np.full((size, size, 3), 128 + 10 * k, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 < 40**2
    return np.where(disc[..., None], 0, 255).astype(np.uint8).repeat(3, axis=2)


def write_tree(photos: Photos, root: str | pathlib.Path) -> list[str]:
    """Writes every image to root/<split>/<class>/<name>; returns each one's path."""
    paths = []
    for data, label, split, path in zip(
        photos.data, photos.labels, photos.splits, photos.paths, strict=True
    ):
        target = pathlib.Path(root) / split / photos.class_names[label] / pathlib.Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        paths.append(str(target))
    return paths


def examine(photos: Photos, root, workdir, weights: str, *, image_size: int = IMAGE_SIZE) -> dict:
    """Runs the package's doctor on the photos written as a folder tree; returns its report.

    `photos.paths` become the written files (as the report names them), and `photos.features`
    and `photos.thumbnails` what the doctor computed, in `photos` order.
    """
    from tl_keras import config as config_lib
    from tl_keras.data.sources import load_data
    from tl_keras.doctor import workflow

    photos.paths = write_tree(photos, root)
    cfg = config_lib.Config(
        data_dir=str(root),
        backbone="mobilenet",
        alpha=0.25,
        weights=weights,
        image_size=image_size,
        batch_size=64,
    )
    spec = config_lib.check(cfg)
    data = load_data(spec)
    result = workflow.doctor_workdir(spec, str(workdir), data=data)
    row = {name: i for i, name in enumerate(workflow.list_images(data).names)}
    order = [row[p] for p in photos.paths]
    with np.load(pathlib.Path(workdir) / workflow.FOLDER / workflow.CACHE_FILE) as f:
        photos.features, photos.thumbnails = f["features"][order], f["thumbnails"][order]
    return result.report
