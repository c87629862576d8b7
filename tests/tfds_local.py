"""TFDS's own `tf_flowers` builder, prepared from local files (a helper module, not a test file).

Only the download is substituted: the download manager returns a local copy of the
`flower_photos` archive for its URL. Everything after it is TFDS's real code: the download
manager's `iter_archive`, the builder's `_split_generators` and `_generate_examples`, the Image and
ClassLabel encoders, the writer and its shards, `dataset_info.json`, and reading back. So a test
built on this helper fails where a user's `download_and_prepare` would (a module the install
lacks, a TFDS change), which `tfds.testing.mock_data` cannot show: it skips all of that.

    archive = pack_archive(make_flower_photos(tmp / "src", per_class=6), tmp / "flower_photos.tgz")
    builder = prepare_tf_flowers(tmp / "tfds", archive)      # real download_and_prepare

In a subprocess (the CLI), `python tests/tfds_local.py ARCHIVE MODULE ARGS...` runs
`python -m MODULE ARGS...` with the substitution in place.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import runpy
import sys
import tarfile
from collections.abc import Iterator, Mapping

import numpy as np

TF_FLOWERS_URL = "http://download.tensorflow.org/example_images/flower_photos.tgz"
# tf_flowers's label order (its ClassLabel names), which is not alphabetical.
TF_FLOWERS_CLASSES = ("dandelion", "daisy", "tulips", "sunflowers", "roses")
# ../shared/data/flowers5 names its folders in the singular; the archive uses these names.
_FLOWERS5_TO_TF_FLOWERS = {
    "daisy": "daisy",
    "dandelion": "dandelion",
    "rose": "roses",
    "sunflower": "sunflowers",
    "tulip": "tulips",
}


def _tiny_jpeg(k: int, i: int, size: int, rng: np.random.Generator) -> bytes:
    """A JPEG whose colour says its class (k) with noise, so no two images are identical."""
    from PIL import Image

    base = np.array([40 + 45 * k, 200 - 35 * k, 60 + 25 * ((k + i) % 5)], np.int16)
    pixels = base + rng.integers(-20, 21, size=(size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_flower_photos(
    root: os.PathLike | str,
    *,
    per_class: int = 6,
    photos: os.PathLike | str | None = None,
    size: int = 32,
    seed: int = 0,
) -> pathlib.Path:
    """Writes `root/flower_photos/<class>/*.jpg` and `LICENSE.txt`, laid out as TFDS's archive is.

    Args:
      root: the folder to write into.
      per_class: images per class.
      photos: a flowers5-style tree (`daisy/ dandelion/ rose/ sunflower/ tulip/`, e.g.
        ../shared/data/flowers5): the first `per_class` files of each class, by name, are copied
        as they are. When None or missing, tiny noisy JPEGs of `size` px are drawn instead.
      size: side of the drawn JPEGs.
      seed: seeds the drawn noise.

    Returns:
      The `flower_photos` folder.
    """
    out = pathlib.Path(root) / "flower_photos"
    rng = np.random.default_rng(seed)
    use_photos = photos is not None and pathlib.Path(photos).is_dir()
    for k, name in enumerate(sorted(TF_FLOWERS_CLASSES)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if use_photos:
            singular = next(s for s, p in _FLOWERS5_TO_TF_FLOWERS.items() if p == name)
            sources = sorted((pathlib.Path(photos) / singular).glob("*.jpg"))[:per_class]
            for src in sources:
                (folder / src.name).write_bytes(src.read_bytes())
        else:
            for i in range(per_class):
                (folder / f"{name}_{i:04d}.jpg").write_bytes(_tiny_jpeg(k, i, size, rng))
    # The real archive holds a LICENSE.txt beside the classes; the builder skips non-.jpg files.
    (out / "LICENSE.txt").write_text("Local test copy: photos under CC-BY 2.0 (Flickr).\n")
    return out


def pack_archive(
    folder: os.PathLike | str, archive: os.PathLike | str, *, arcname: str | None = None
) -> pathlib.Path:
    """Packs a folder as `archive` (`.tgz` as TFDS downloads it, or a faster plain `.tar`).

    Args:
      folder: what to pack; it is the archive's top folder, named `arcname` (default: its name).
      archive: the file to write; its suffix picks gzip or not.
      arcname: the top folder's name inside the archive.
    """
    archive = pathlib.Path(archive)
    mode = "w:gz" if archive.name.endswith((".tgz", ".tar.gz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname or pathlib.Path(folder).name)
    return archive


@contextlib.contextmanager
def local_downloads(files: Mapping[str, os.PathLike | str]) -> Iterator[list[str]]:
    """Makes TFDS's download manager take local files for the given URLs instead of fetching them.

    The one TFDS method replaced is `DownloadManager._download_or_get_cache` (fetch a URL, or
    find it already fetched), which both `download` and `download_and_extract` go through; what
    it returns then goes through TFDS's real code (`extract`, `iter_archive`, the builder). A URL
    not in `files` fails as an offline download would, so nothing reaches the network unnoticed.

    Args:
      files: URL -> local path of what it would download (an archive is extracted by TFDS).

    Yields:
      The URLs asked for, in order (a test can check the download step was reached).
    """
    import promise
    import tensorflow_datasets as tfds
    from etils import epath

    manager = tfds.download.DownloadManager
    original = manager._download_or_get_cache  # AttributeError here: TFDS renamed its download
    asked: list[str] = []

    def download_or_get_cache(self, resource):
        url = str(getattr(resource, "url", resource))
        asked.append(url)
        if url not in files:
            raise ConnectionError(f"tfds_local: no local file for {url} (offline test)")
        return promise.Promise.resolve(epath.Path(files[url]))

    manager._download_or_get_cache = download_or_get_cache
    try:
        yield asked
    finally:
        manager._download_or_get_cache = original


CATS_VS_DOGS_URL = (
    "https://download.microsoft.com/download/3/E/1/"
    "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)
# The builder insists on finding exactly this many files that are not JFIF JPEGs (and drops them).
_CATS_VS_DOGS_CORRUPT = 1738


def make_cats_vs_dogs_zip(archive: os.PathLike | str, *, per_class: int = 4) -> pathlib.Path:
    """Writes the cats_vs_dogs zip as TFDS downloads it: `PetImages/{Cat,Dog}/<n>.jpg`.

    The builder counts the non-JFIF files it drops and fails unless there are 1,738 of them,
    so the zip holds that many empty `.jpg` files beside `per_class` real JPEGs a class.
    """
    import zipfile

    rng = np.random.default_rng(0)
    archive = pathlib.Path(archive)
    with zipfile.ZipFile(archive, "w") as z:
        for k, name in enumerate(("Cat", "Dog")):
            for i in range(per_class):
                z.writestr(f"PetImages/{name}/{i}.jpg", _tiny_jpeg(k, i, 32, rng))
        for i in range(_CATS_VS_DOGS_CORRUPT):
            z.writestr(f"PetImages/Cat/{10_000 + i}.jpg", b"")
    return archive


OXFORD_FLOWERS102_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


def make_oxford_flowers102(root: os.PathLike | str, *, per_split: int = 1) -> dict[str, str]:
    """Writes oxford_flowers102's three downloads: `102flowers.tgz` and two MATLAB files.

    Every one of the 102 classes gets `per_split` images in each of train, validation and test
    (`setid.mat`'s trnid / valid / tstid), so each split holds every class.

    Returns:
      URL -> local file, for `local_downloads`.
    """
    import scipy.io

    root = pathlib.Path(root)
    images = root / "jpg"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 102 * 3 * per_split
    labels = np.tile(np.arange(1, 103), 3 * per_split)  # 1-based, as the real file
    for image_id in range(1, n + 1):
        jpeg = _tiny_jpeg(int(labels[image_id - 1]) % 5, image_id, 16, rng)
        (images / f"image_{image_id:05d}.jpg").write_bytes(jpeg)
    ids = np.arange(1, n + 1).reshape(3, -1)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    scipy.io.savemat(root / "setid.mat", {"trnid": ids[:1], "valid": ids[1:2], "tstid": ids[2:]})
    tgz = pack_archive(images, root / "102flowers.tgz")  # holds jpg/image_00001.jpg ...
    base = OXFORD_FLOWERS102_URL
    return {
        base + "102flowers.tgz": str(tgz),
        base + "imagelabels.mat": str(root / "imagelabels.mat"),
        base + "setid.mat": str(root / "setid.mat"),
    }


def prepare_tf_flowers(
    data_dir: os.PathLike | str, archive: os.PathLike | str, *, num_shards: int | None = None
):
    """Runs TFDS's real `download_and_prepare` of tf_flowers into `data_dir`, from `archive`.

    Args:
      data_dir: the tfds_data_dir to prepare into.
      archive: a `flower_photos` archive (`make_flower_photos` + `pack_archive`).
      num_shards: shards of the train split; None lets TFDS choose by size, as for a user.

    Returns:
      The prepared builder.
    """
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(num_shards=num_shards)
    with local_downloads({TF_FLOWERS_URL: archive}):
        builder = tfds.builder("tf_flowers", data_dir=os.fspath(data_dir))
        builder.download_and_prepare(download_config=config)
    return builder


# No network, whatever the machine: every HTTP(S) request goes to a proxy that is not there
# (the discard port on this host), so it fails at once as on an offline machine.
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


def main(argv: list[str]) -> None:
    """`tfds_local.py ARCHIVE|offline MODULE ARGS...`: `python -m MODULE ARGS...` with TFDS local.

    ARCHIVE: tf_flowers's download is that local archive. `offline`: nothing is substituted, and
    TFDS's HTTP retries are turned off (urllib3 retries a refused connection 10 times with
    backoff, about 3.5 minutes), so an offline failure shows in seconds.
    """
    archive, module, *args = argv
    sys.argv = [module, *args]
    if archive == "offline":
        from tensorflow_datasets.core.download import downloader

        downloader.MAX_RETRIES = 0
        files = {}
    else:
        files = {TF_FLOWERS_URL: archive}
    with local_downloads(files) if files else contextlib.nullcontext():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
