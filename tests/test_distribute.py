"""tf.distribute: MirroredStrategy over two logical CPUs, and two local multi-worker processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from inprocess import command

from tl_keras.training.history import History

pytestmark = pytest.mark.slow

# 18 training images in batches of 6: every batch splits evenly over 2 replicas.
ARGS = [
    "--synthetic_images_per_class=8",
    "--backbone=tiny",
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
    from tl_keras.data.sources.synthetic import make_shapes

    return make_shapes(str(tmp_path_factory.mktemp("shapes")), images_per_class=8, image_size=32)


def test_mirrored_over_two_logical_cpus_matches_one_device(shapes, tmp_path):
    # One device: the command in this process (tests/inprocess.py); two: a process of its own,
    # where the two logical CPUs are made before TensorFlow starts.
    one = command(*ARGS, f"--data_dir={shapes}", f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
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


# Each worker runs the real command (`python -m tl_keras.train`'s entry, with TF_CONFIG) and
# records the images of every batch it trains on, as its train step runs them (not as the
# pipeline produces them: Keras reads ahead once to learn the shapes). Image k is a solid colour
# whose red value is 8 k, so the pixels say which image it is (fine-tuning's batches: feature
# extraction trains the head on cached features). One pair of processes checks both the
# chief-only artifacts and the sharding (each pair costs the suite two TensorFlow start-ups).
RECORDER = """
import json, sys
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
from tl_keras.cli.train import run_main

out = sys.argv[1]
seen = []
train_step = TensorFlowTrainer.train_step

def record(x):
    seen.append(np.rint(x.numpy()[:, 0, 0, 0] / 8).astype(int).tolist())
    return 0

def recording_train_step(self, data):
    if len(data[0].shape) == 4:  # images (fe's head trains on cached features)
        tf.py_function(record, [data[0]], tf.int32)
    return train_step(self, data)

TensorFlowTrainer.train_step = recording_train_step
sys.argv = ["tl_keras.train", *sys.argv[2:]]
try:
    run_main()
finally:
    with open(out, "w") as f:
        json.dump(seen, f)
"""


def coded_images(root, first: int, count: int):
    """Images first .. first + count - 1 in 3 class folders; image k is solid red 8 k."""
    from data_fixtures import encode

    for k in range(first, first + count):
        folder = root / f"c{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[...] = (8 * k, 60 * (k % 3), 50)
        (folder / f"img{k:03d}.png").write_bytes(encode(pixels))
    return root


def test_multi_worker_two_processes_train_only_the_chief_writes_and_each_image_once(tmp_path):
    """Two local workers: both train, only the chief writes, both see the same reduced metrics,
    and together they see every training image exactly once per fine-tuning epoch."""
    train = coded_images(tmp_path / "train", 0, 25)  # 25: 12 and 13 per worker
    val = coded_images(tmp_path / "val", 25, 3)
    workdir = tmp_path / "run"
    args = [
        f"--data_dir={train}", f"--val_dir={val}", "--val_fraction=0", "--backbone=tiny",
        "--weights=none", "--image_size=32", "--batch_size=6", "--epochs_fe=2", "--epochs_ft=2",
        "--head_units=8", "--dropout=0", "--unfreeze=blocks:2",
        "--progress=lines", f"--workdir={workdir}", "--strategy=multi_worker",
    ]  # fmt: skip
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(tmp_path / f"seen{i}.json"), *args],
            cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                 "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    chief_out, worker_out = (finish(p) for p in procs)
    assert "worker 1 of 2: training; the chief writes every artifact" in worker_out
    run = json.loads((workdir / "run.json").read_text())
    assert list(run["phases"]) == ["fe", "ft"]
    history = History.load(str(workdir / "history.json"))
    assert history.epochs == [1, 2, 3, 4] and history.boundaries() == [2.5]
    assert "[fe] cached features" in chief_out
    assert all(r["loss"] is not None for r in history.records)
    for phase in ("fe", "ft"):
        assert (workdir / phase / "model.keras").is_file()
    # Both workers saw the same globally reduced metrics.
    assert chief_out.count("[ft] epoch 4") == worker_out.count("[ft] epoch 4") == 1
    last = [ln for ln in chief_out.splitlines() if "[ft] epoch 4" in ln][0].split(" - ", 2)[2]
    assert last in worker_out
    seen = [json.loads((tmp_path / f"seen{i}.json").read_text()) for i in range(2)]
    assert [len(steps) for steps in seen] == [8, 8]  # 2 ft epochs of 4 steps on each worker
    for epoch in (0, 1):
        parts = [[k for batch in steps[4 * epoch : 4 * epoch + 4] for k in batch] for steps in seen]
        assert sorted(parts[0] + parts[1]) == list(range(25)), epoch  # each exactly once
        assert sorted(map(len, parts)) == [12, 13]  # batches of 3; the last of 13 takes 4


def test_tpu_strategy_without_a_tpu_is_refused_in_one_line(monkeypatch):
    """--strategy=tpu passes the config's checks (a TPU is the machine's, not the config's), and
    with none attached TensorFlow's resolver raised ValueError: a traceback, exit 1."""
    from tl_keras.errors import ConfigError
    from tl_keras.training import distribute

    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match=r"--strategy=tpu found no TPU.*--strategy=default"):
        distribute.make_strategy("tpu")
