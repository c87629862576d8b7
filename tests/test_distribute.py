"""tf.distribute: MirroredStrategy over two logical CPUs, and two local multi-worker processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO

from tl_keras.history import History

pytestmark = pytest.mark.slow

# 18 training images in batches of 6: every batch splits evenly over 2 replicas.
ARGS = [
    "--synthetic_images_per_class=8",
    "--backbone=mobilenet",
    "--alpha=0.25",
    "--weights=none",
    "--image_size=32",
    "--batch_size=6",
    "--val_fraction=0.25",
    "--epochs_fe=2",
    "--epochs_ft=1",
    "--head_units=8",
    "--dropout=0",
    "--unfreeze=blocks:2",
    "--progress=lines",
]


def cli(*args, env=None):
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tl_keras.train", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from tl_keras.data.synthetic import make_shapes

    return make_shapes(str(tmp_path_factory.mktemp("shapes")), images_per_class=8, image_size=32)


def test_mirrored_over_two_logical_cpus_matches_one_device(shapes, tmp_path):
    one = cli(*ARGS, f"--data_dir={shapes}", f"--workdir={tmp_path / 'one'}")
    finish(one)
    two = cli(
        *ARGS,
        f"--data_dir={shapes}",
        f"--workdir={tmp_path / 'two'}",
        "--strategy=mirrored",
        "--logical_cpus=2",
    )
    out = finish(two)
    a, b = (
        History.load(str(tmp_path / "one" / "history.json")),
        History.load(str(tmp_path / "two" / "history.json")),
    )
    assert a.epochs == b.epochs == [1, 2, 3] and a.boundaries() == b.boundaries() == [2.5]
    for ra, rb in zip(a.records, b.records, strict=True):
        for key in ("loss", "val_loss", "val_accuracy", "lr"):
            # The same batches, their gradients averaged over two replicas: equal up to the order
            # of float additions.
            assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-4), (ra["epoch"], key)
    assert "done: fe -> ft" in out


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_two_processes_train_and_only_the_chief_writes(shapes, tmp_path):
    workdir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = [
        cli(*ARGS, f"--data_dir={shapes}", f"--workdir={workdir}", "--strategy=multi_worker",
            env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]  # fmt: skip
    chief_out, worker_out = (finish(p) for p in procs)
    assert "worker 1 of 2: training; the chief writes every artifact" in worker_out
    run = json.loads((workdir / "run.json").read_text())
    assert list(run["phases"]) == ["fe", "ft"]
    history = History.load(str(workdir / "history.json"))
    assert history.epochs == [1, 2, 3] and history.boundaries() == [2.5]
    assert all(r["loss"] is not None for r in history.records)
    for phase in ("fe", "ft"):
        assert (workdir / phase / "model.keras").is_file()
    # Both workers saw the same globally reduced metrics.
    assert chief_out.count("[ft] epoch 3") == worker_out.count("[ft] epoch 3") == 1
    last = [ln for ln in chief_out.splitlines() if "[ft] epoch 3" in ln][0].split(" - ", 2)[2]
    assert last in worker_out
