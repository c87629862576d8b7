"""TensorFlow's start-up lines stay off a command's stderr; `--verbose` brings them back.

`tl_keras.cli.common` (its last section) says where each line comes from (one TensorFlow start-up, whose lines
come twice because the profiler plugin links a second copy of the platform code).
"""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from tl_keras.cli import common

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796516700.137802   10282 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796516700.138018   10282 cudart_stub.cc:31] Could not find cuda drivers\n",
    b"E0000 00:00:1796516839.486499   14615 cuda_platform.cc:52] failed call to cuInit: (303)\n",
    b"W1206 00:27:24.640103 140012345 some_file.py:123] a TensorFlow warning\n",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild\n",
]
KEPT = [
    b"error: data_dir='x' is empty; it needs one sub-folder of images per class\n",
    b"Traceback (most recent call last):\n",
    b"UserWarning: something a user should read\n",
]


def test_noise_is_the_native_log_format_and_nothing_else():
    assert all(common.is_tf_noise(line) for line in NOISE)
    assert not any(common.is_tf_noise(line) for line in KEPT)


def test_filtered_block_writes_back_what_is_not_noise(capfd):
    with common.native_stderr_filtered():
        for line in NOISE + KEPT:
            os.write(2, line)
    err = capfd.readouterr().err
    assert err == b"".join(KEPT).decode()


def test_a_failed_block_writes_back_everything(capfd):
    with pytest.raises(ImportError), common.native_stderr_filtered():
        os.write(2, NOISE[1])
        raise ImportError("no tensorflow")
    assert capfd.readouterr().err == NOISE[1].decode()


def _train_on_an_empty_folder(tmp_path, *flags):
    """A command that imports TensorFlow, then stops on bad data: its stderr is all it says."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tl_keras.train",
            f"--data_dir={tmp_path / 'empty'}",
            f"--workdir={tmp_path / 'run'}",
            *flags,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_command_shows_no_tensorflow_start_up_lines_unless_verbose(tmp_path):
    quiet = _train_on_an_empty_folder(tmp_path)
    assert quiet.returncode == 2
    assert quiet.stderr.decode().splitlines() == [
        f"error: data_dir='{tmp_path / 'empty'}' is empty; it needs one sub-folder of images "
        "per class"
    ]
    verbose = _train_on_an_empty_folder(tmp_path, "--verbose")
    assert verbose.returncode != 0
    lines = verbose.stderr.splitlines(keepends=True)
    assert any(common.is_tf_noise(line) for line in lines), verbose.stderr[:2000]
    # Linux wheels print absl's preamble on every CPU; the oneDNN line only where TensorFlow
    # turns oneDNN on by default (AVX-512 VNNI / BF16 or AMX: not on an AVX2-only AMD EPYC).
    assert b"absl::InitializeLog()" in verbose.stderr or sys.platform != "linux"
    assert b"Traceback" in verbose.stderr  # --verbose's own meaning is kept
