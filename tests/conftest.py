"""Shared fixtures: tiny data sets and models, and the optional ../shared material.

Everything here is small on purpose (32-64 px, a few dozen images, 1-2 epochs): TensorFlow on 2
CPU cores is slow, and the tests check behaviour, not accuracy. Tests that need ../shared (real
ImageNet weights, real flower photos) are marked `shared` and skip cleanly without it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# What tl_keras remembers about data (decode checks, TFDS indexes) goes to a folder of this test
# session, inherited by the commands the tests run, never to the user's ~/.cache.
if "TL_KERAS_CACHE_DIR" not in os.environ:
    os.environ["TL_KERAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="tl_keras-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TL_KERAS_CACHE_DIR"], True)

# The slowest files first: the parallel run (`--dist loadfile --no-loadscope-reorder`, each
# file's tests in one process) then ends on small files, not on one worker still busy with a
# long one. The longest single tests lead (the smoke benchmarks, one process running for
# minutes each; compare's module fixture), then the files by their total (`--durations=0`,
# 2026-12-06 on a machine loaded 8-12: bench_recipe 739 s, bench_scale 497 s, compare 479 s with
# a 247 s fixture, bench_soak 173 s; the resume scenarios 901 s, the notebooks 778 s, both one
# unit per test; export 449 s, reliability 387 s, the speed benchmarks 378 s, ...).
SLOWEST_FIRST = (
    "test_bench_recipe.py",
    "test_bench_scale.py",
    "test_compare.py",
    "test_bench_soak.py",
    "test_notebooks.py",
    "test_resume.py",
    "test_export_cli.py",
    "test_reliability.py",
    "test_benchmarks_speed.py",
    "test_distribute.py",
    "test_hub.py",
    "test_auto_run.py",
    "test_cli.py",
    "test_readme_beyond.py",
    "test_data_cli.py",
    "test_backbones.py",
    "test_bench_stall.py",
    "test_transaction.py",
    "test_lock.py",
)


# Files of long tests, each a work unit of its own so they spread over the workers instead of
# queueing on one: the notebooks (a kernel each), the kill-and-resume scenarios (real processes;
# their fixtures, a stand-in for pretrained weights, one uninterrupted run and one killed run,
# are built once per test run and shared by the workers: `built_once` below).
ONE_UNIT_PER_TEST = ("test_notebooks.py", "test_resume.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than xdist's own count (the physical cores), at most
    `--maxprocesses`; `PYTEST_XDIST_AUTO_NUM_WORKERS` still sets the number outright.

    A worker does not keep a core busy all the time: it waits for the processes it starts, and
    the time-budget runs last as long as their budgets (what it saved: docs/architecture.md).
    """
    from xdist.plugin import pytest_xdist_auto_num_workers as cores

    count = cores(config)
    return count if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else count + 1


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, except for the files of ONE_UNIT_PER_TEST (whose tests go out one by one
    like `--dist load`); any other mode is xdist's own."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.rsplit("/", 1)[-1] in ONE_UNIT_PER_TEST else path

    return Scheduling(config, log)


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TL_KERAS_SHARED", REPO.parent / "shared"))
MOBILENET_025_NOTOP = SHARED / "weights" / "mobilenet_1_0.25_224_imagenet_notop.weights.h5"
MOBILENET_025_NOTOP_SHA256 = "71750134a6cc506c16ca0cd73c5e9f1fd9384eb9c7d94413f18a8df52e446119"
FLOWERS = SHARED / "data" / "flowers5"


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def shared_weights() -> str:
    """Path of the real MobileNet-0.25 ImageNet no-top weights; skips when ../shared is absent."""
    if not MOBILENET_025_NOTOP.is_file():
        pytest.skip(f"no shared weights at {MOBILENET_025_NOTOP}")
    return str(MOBILENET_025_NOTOP)


@pytest.fixture(scope="session")
def flowers_dir() -> str:
    if not FLOWERS.is_dir():
        pytest.skip(f"no shared flower photos at {FLOWERS}")
    return str(FLOWERS)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """A tiny synthetic image-folder tree: 3 classes x 12 PNGs of 48 px."""
    from tl_keras.data.sources import synthetic

    def build(folder):
        synthetic.make_shapes(str(folder), images_per_class=12, image_size=48)

    return str(built_once(tmp_path_factory, "shapes", build))


# What `tiny_config` trains: the test backbone `tiny` (tl_keras/model/tiny.py) at 32 px, random
# weights, 1+1 epochs on 3 x 8 synthetic shapes. Tests about a real family name it (`backbone=`).
TINY_RUN = dict(
    data_dir="synthetic",
    synthetic_images_per_class=8,
    backbone="tiny",
    weights="none",
    image_size=32,
    batch_size=8,
    epochs_fe=1,
    epochs_ft=1,
    head_units=8,
    unfreeze="blocks:2",
    progress="lines",
    # The mechanics under test, not the decided recipe (tests/test_recipe_auto*.py): the
    # fixed defaults of recipe = "manual".
    recipe="manual",
)


@contextlib.contextmanager
def run_log_and_calibration():
    """While the block runs: the tl_keras logger's messages (INFO and up), and the names of the
    models calibration asked for answers. For fixtures wider than a test, where caplog and
    monkeypatch do not reach."""
    import logging

    from tl_keras.training import calibrate

    logger, lines, answered_by = logging.getLogger("tl_keras"), [], []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    answers, level = calibrate._answers, logger.level

    def spy(model, dataset):
        answered_by.append(model.name)
        return answers(model, dataset)

    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    calibrate._answers = spy
    try:
        yield lines, answered_by
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        calibrate._answers = answers


def tiny_config(**overrides):
    """A config that trains in seconds (`TINY_RUN`, with `overrides`)."""
    from tl_keras.config import Config

    return Config(**{**TINY_RUN, **overrides})


def tiny_flags(**overrides) -> list[str]:
    """The same run as `tiny_config(**overrides)`, as the commands' flags."""
    return [f"--{name}={value}" for name, value in {**TINY_RUN, **overrides}.items()]


@pytest.fixture
def make_config():
    return tiny_config


def run_cli(
    *args: str,
    cwd: str | os.PathLike = REPO,
    timeout: int = 600,
    env: dict | None = None,
    module: str = "tl_keras.train",
) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` in a subprocess and returns the completed process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_module(
    module: str, *args: str, cwd: str | os.PathLike = REPO, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` (any tl_keras command) in a subprocess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_benchmark(
    script: str,
    results_dir: str | os.PathLike,
    *args: str,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """Runs `python benchmarks/SCRIPT ARGS` from the repository, as docs/benchmarks.md writes it,
    its JSON results in `results_dir` (`TL_KERAS_BENCH_RESULTS`): a smoke run never replaces the
    measured figures in benchmarks/results/."""
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TL_KERAS_BENCH_RESULTS": str(results_dir),
    }
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- built once per test run, shared by the xdist workers ----------------------------------------
def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """`build(folder)` run once per test run, not once per xdist worker: the first worker to ask
    builds `name` in the run's temporary root (under a file lock, behind a `.done` mark), the
    others wait for it and read it. Without xdist, a folder of this session. Read-only: copy it
    (`worker_copy`, `shutil.copytree`) before anything writes there, a command's lock included."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    import fcntl  # the workers' lock: an exclusive flock, released when the file is closed

    root = tmp_path_factory.getbasetemp().parent / "built_once"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def worker_copy(tmp_path_factory, name: str, build) -> pathlib.Path:
    """This worker's own copy of `built_once(name)`: tests may run commands in it that take
    the workdir's one-writer lock (a refused `train`, a `--resume` with nothing to do) without
    meeting another worker's."""
    source = built_once(tmp_path_factory, name, build)
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return source
    copy = tmp_path_factory.mktemp(name) / source.name
    shutil.copytree(source, copy, symlinks=True)
    return copy


# --- workdirs built once per test run, read-only ---------------------------------------------------
# A test that damages or extends one copies it first (`shutil.copytree`); a command that only
# reads one, or is refused on it, may use it in place (each worker has its own copy).
TRAINED = dict(synthetic_images_per_class=10)  # 24 training / 6 validation images


def _train_into(folder: pathlib.Path, **kwargs) -> None:
    from tl_keras.training.runner import train

    train(tiny_config(**TRAINED), str(folder / "run"), **kwargs)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> str:
    """A finished tiny fe -> ft run (`tiny_config(**TRAINED)`), shared by the tests that
    evaluate, predict with, export or refuse to overwrite a trained model."""
    return str(worker_copy(tmp_path_factory, "trained", _train_into) / "run")


@pytest.fixture(scope="session")
def fe_done_workdir(tmp_path_factory) -> str:
    """The same run with only phase `fe` done (`--phase=fe`), for the tests of a later phase."""

    def build(folder):
        _train_into(folder, phase="fe")

    return str(worker_copy(tmp_path_factory, "fe_done", build) / "run")
