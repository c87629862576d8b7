"""The data doctor as users run it: `python -m tl_keras.doctor`, the step before training, its
feature pass shared with `fe`, its cache, and what it says at scale.

These run without ../shared: on a random base (`weights = "none"`: hashes and balance only) or
a random `tiny` base saved as a weights file (the feature path; its features mean nothing, so
these tests check the plumbing, not the findings: tests/test_doctor_flowers.py checks those on
real photos).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shlex
import shutil

import numpy as np
import pytest
from conftest import REPO, run_module, tiny_config
from doctor_fixtures import BACKBONE, base_weights, flags, noise_png, noise_tree
from inprocess import command

from tl_keras import config as config_lib
from tl_keras.doctor import workflow


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    return base_weights(tmp_path_factory.mktemp("weights") / "tiny.weights.h5")


def leaky_tree(root):
    """train / val / test with one image copied into val and test, and a 25:4 imbalance."""
    tree = noise_tree(
        root,
        {
            "train": {"ant": 18, "bee": 6, "cat": 2},
            "val": {"ant": 3, "bee": 2, "cat": 1},
            "test": {"ant": 2, "bee": 1, "cat": 1},
        },
    )
    for split in ("val", "test"):
        shutil.copy(tree / "train" / "ant" / "ant_0.png", tree / split / "ant" / "copy_of_0.png")
    return tree


def test_cli_finds_a_copy_in_every_split_and_the_imbalance(tmp_path):
    """`python -m tl_keras.doctor` in a process of its own, as users run it."""
    tree = leaky_tree(tmp_path / "data")
    workdir = tmp_path / "work"
    proc = run_module("tl_keras.doctor", *flags(tree), f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = next(ln for ln in proc.stdout.splitlines() if ln.startswith("doctor: "))
    assert summary == (
        "doctor: 1 duplicate group (1 across train/val/test), label errors not checked, "
        "imbalance 6:1 (ant 25, cat 4), outliers not checked (1 limit: see report)"
    )
    report = json.loads((workdir / "doctor" / "report.json").read_text())
    (group,) = report["duplicates"]["groups"]
    assert group["kind"] == "exact" and group["evidence"] == ["same bytes"]
    assert [m["split"] for m in group["members"]] == ["train", "val", "test"]
    assert group["members"][0]["path"] == str(tree / "train" / "ant" / "ant_0.png")
    assert report["duplicates"]["leaked_from_train"] == {"val": 1, "test": 1}
    assert "weights='none'" in report["limits"][0]
    assert report["data"]["images"] == {"train": 26, "val": 7, "test": 5}
    assert len(report["data"]["manifest_sha256"]) == 64
    text = (workdir / "doctor" / "report.md").read_text()
    assert "Leakage first" in text and "copy_of_0.png" in text
    assert (workdir / "doctor" / "thumbnails.png").read_bytes()[:4] == b"\x89PNG"
    assert str(workdir / "doctor" / "report.md") in proc.stdout


def test_training_runs_the_doctor_first_and_records_it(trained_workdir):
    run = json.loads((pathlib.Path(trained_workdir) / "run.json").read_text())
    report = json.loads((pathlib.Path(trained_workdir) / "doctor" / "report.json").read_text())
    assert run["doctor"]["summary"] == report["summary"]
    assert run["doctor"]["manifest_sha256"] == report["data"]["manifest_sha256"]
    assert run["doctor"]["report"] == "doctor/report.json"


def test_doctor_off_skips_it(tmp_path):
    from tl_keras.training.runner import train

    workdir = tmp_path / "off"
    train(tiny_config(doctor="off", synthetic_images_per_class=4), str(workdir), phase="fe")
    run = json.loads((workdir / "run.json").read_text())
    assert run["doctor"] == {"skipped": "doctor='off'"}
    assert not (workdir / "doctor").exists()


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_fe_trains_on_the_features_the_doctor_computed(tmp_path, weights_file):
    """On the default path (no augmentation) the doctor's feature pass is fe's: no second pass.
    With doctor = 'full' every check runs before training."""
    from tl_keras.training.runner import train

    tree = noise_tree(tmp_path / "data", {"ant": 10, "bee": 10})
    cfg = tiny_config(data_dir=str(tree), weights=weights_file, epochs_ft=0, doctor="full")
    lines, logger = Lines(), logging.getLogger("tl_keras")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        train(cfg, str(tmp_path / "work"), phase="fe")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    doctor = next(i for i, ln in enumerate(lines.lines) if ln.startswith("doctor: "))
    fe = next(i for i, ln in enumerate(lines.lines) if "[fe] cached features" in ln)
    assert doctor < fe and "reused the features of 16 train + 4 validation" in lines.lines[fe]
    report = json.loads((tmp_path / "work" / "doctor" / "report.json").read_text())
    assert report["features"]["computed"] and report["label_errors"]["checked"]
    assert report["checks"] == ["duplicates", "balance", "label_errors", "outliers"]
    assert report["deferred"] == [] and report["outliers"]["checked"]
    assert "deferred" not in report["summary"] and "later" not in report
    run = json.loads((tmp_path / "work" / "run.json").read_text())
    assert run["doctor"]["deferred"] == [] and "later" not in run["doctor"]


def test_the_default_checks_duplicates_and_balance_and_defers_the_rest(tmp_path, weights_file):
    """doctor = 'auto' (the default): before training only duplicates (here an exact copy under
    the other class) and the balance; label errors and outliers say `deferred`, with no count
    that reads as a verdict, and `python -m tl_keras.doctor --workdir=W` runs them afterwards on
    the cached features and rewrites the report."""
    from tl_keras.training.runner import train

    tree = noise_tree(tmp_path / "data", {"ant": 10, "bee": 10})
    shutil.copy(tree / "ant" / "ant_0.png", tree / "bee" / "bee_copy.png")
    workdir = tmp_path / "work"
    assert config_lib.Config().doctor == "auto"
    train(tiny_config(data_dir=str(tree), weights=weights_file, epochs_ft=0), str(workdir))
    report = json.loads((workdir / "doctor" / "report.json").read_text())
    assert report["checks"] == ["duplicates", "balance"]
    assert report["deferred"] == ["label_errors", "outliers"]
    (group,) = report["duplicates"]["groups"]
    assert group["kind"] == "exact" and group["label_conflict"]
    assert report["balance"]["totals"] == {"ant": 10, "bee": 11}
    assert report["label_errors"] == {
        "checked": False, "deferred": True, "num_likely": None, "suspects": []
    }  # fmt: skip
    assert report["outliers"] == {
        "checked": False, "deferred": True, "num_outliers": None, "items": []
    }  # fmt: skip
    assert report["summary"] == (
        "doctor: 1 duplicate group (1 across train/val), balance ok; label errors and "
        "outliers deferred"
    )
    later = f"python -m tl_keras.doctor --workdir={workdir}"
    assert report["later"] == later
    run = json.loads((workdir / "run.json").read_text())
    assert run["doctor"]["checks"] == report["checks"] and run["doctor"]["later"] == later
    assert run["doctor"]["deferred"] == report["deferred"]
    text = (workdir / "doctor" / "report.md").read_text()
    assert "## Deferred" in text and f"`{later}`" in text
    assert text.count("Deferred (see above).") == 2
    assert not (workdir / "doctor" / "thumbnails.png").exists()

    proc = run_module("tl_keras.doctor", f"--workdir={workdir}")  # its own saved config
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((workdir / "doctor" / "report.json").read_text())
    assert not after["features"]["computed"]  # the cached features: no second feature pass
    assert after["checks"] == ["duplicates", "balance", "label_errors", "outliers"]
    assert after["deferred"] == [] and "later" not in after
    assert after["label_errors"]["checked"] and after["label_errors"]["num_likely"] is not None
    assert after["outliers"]["checked"] and after["outliers"]["num_outliers"] is not None
    assert after["duplicates"] == report["duplicates"]
    assert after["data"]["manifest_sha256"] == report["data"]["manifest_sha256"]
    assert "deferred" not in after["summary"] and after["summary"] in proc.stdout
    assert "## Deferred" not in (workdir / "doctor" / "report.md").read_text()


def test_the_cache_is_reused_until_a_file_changes(tmp_path, weights_file):
    tree = noise_tree(
        tmp_path / "data",
        {"train": {"ant": 8, "bee": 8}, "val": {"ant": 2, "bee": 2}, "test": {"ant": 2, "bee": 2}},
    )
    cfg = config_lib.Config(
        data_dir=str(tree),
        backbone=BACKBONE,
        weights=weights_file,
        image_size=32,
        batch_size=16,
    )
    work = str(tmp_path / "work")
    first = workflow.doctor_workdir(cfg, work)
    second = workflow.doctor_workdir(cfg, work)
    assert first.report["features"]["computed"] and not second.report["features"]["computed"]
    assert second.report["features"]["reused"].endswith("doctor/features.npz")
    with np.load(f"{work}/doctor/features.npz") as f:
        before = f["features"]
    assert before.shape == (24, 128)  # train, val and test; tiny's 128 features
    (tree / "test" / "bee" / "bee_1.png").write_bytes(noise_png(999))  # same name, new content
    third = workflow.doctor_workdir(cfg, work)
    assert third.report["features"]["computed"]
    with np.load(f"{work}/doctor/features.npz") as f:
        after = f["features"]
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert changed.tolist() == [23]  # test/bee/bee_1.png, the last row: only it changed


def test_above_the_limit_the_checks_run_on_a_sample_that_keeps_every_copy(
    tmp_path, weights_file, monkeypatch
):
    tree = noise_tree(tmp_path / "data", {"ant": 14, "bee": 14})
    shutil.copy(tree / "ant" / "ant_0.png", tree / "bee" / "bee_copy.png")
    monkeypatch.setattr(workflow, "MAX_DIAGNOSED", 12)
    cfg = config_lib.Config(
        data_dir=str(tree),
        backbone=BACKBONE,
        weights=weights_file,
        image_size=32,
        val_fraction=0.0,
    )
    report = workflow.doctor_workdir(cfg, str(tmp_path / "work")).report
    assert report["limits"][0].startswith("29 images: near-duplicates, label errors and outliers")
    assert "sample of 12" in report["limits"][0]
    assert report["num_images"] == 12
    assert report["balance"]["totals"] == {"ant": 14, "bee": 15}  # every image
    (group,) = report["duplicates"]["groups"]
    assert group["kind"] == "exact" and group["label_conflict"]


def test_scale_sample_is_seeded_and_holds_every_copy():
    hashes = [f"h{i}" for i in range(100)] + ["h3", "h50"]
    a = workflow.scale_sample(hashes, 10, seed=0)
    assert len(a) == 10 and {3, 50, 100, 101} <= set(a.tolist())
    np.testing.assert_array_equal(a, workflow.scale_sample(hashes, 10, seed=0))


def readme_doctor_commands() -> list[str]:
    """The commands of the first code block of docs/doctor.md (the guide to the data doctor)."""
    section = (REPO / "docs" / "doctor.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [ln.strip() for ln in block.splitlines() if ln.startswith("python -m")]


def test_the_readme_commands_run(tmp_path):
    """Each docs/doctor.md command as written, made tiny by flags after it (a noise tree, no
    weights), through the command's main in this process."""
    commands = readme_doctor_commands()
    assert len(commands) == 2
    tree = noise_tree(tmp_path / "data", {"ant": 6, "bee": 6})
    for k, line in enumerate(commands):
        args = [a for a in shlex.split(line)[3:] if not a.startswith("--workdir=")]
        workdir = tmp_path / f"w{k}"
        proc = command(
            *args, *flags(tree), f"--workdir={workdir}", "--cache=none", module="tl_keras.doctor"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (workdir / "doctor" / "report.md").is_file()


def test_deferred_for_each_mode():
    from tl_keras import doctor

    assert doctor.MODES == ("auto", "full", "off")
    assert workflow.deferred_for("auto") == ("label_errors", "outliers")
    assert workflow.deferred_for("full") == ()
    with pytest.raises(ValueError, match="'on' is not one of"):
        workflow.deferred_for("on")


def test_a_staged_overwrite_names_the_workdir_it_ends_in(tmp_path, weights_file):
    """--overwrite stages the new run beside the workdir: the command that runs the deferred
    checks must name the workdir the run ends in, not the staging folder."""
    from tl_keras.training.runner import train

    tree = noise_tree(tmp_path / "data", {"ant": 10, "bee": 10})
    workdir = tmp_path / "work"
    cfg = tiny_config(data_dir=str(tree), weights=weights_file, epochs_ft=0)
    train(cfg, str(workdir))
    train(cfg, str(workdir), overwrite=True)
    later = f"python -m tl_keras.doctor --workdir={workdir}"
    report = json.loads((workdir / "doctor" / "report.json").read_text())
    run = json.loads((workdir / "run.json").read_text())
    assert report["later"] == later and run["doctor"]["later"] == later
    assert f"`{later}`" in (workdir / "doctor" / "report.md").read_text()
