"""The bad-input battery: one test per row of docs/bad_inputs.md, through the commands.

Every case: a non-zero exit, exactly one `error:` line naming the value and what to do, no
traceback, and no change to what the workdir held before. Each command runs in this process
(`inprocess.command`: its flags parsed by absl, its `main` called, stderr and the exit status
captured); what only a real process shows runs in one: absl's own flag error, the read-only
mounts.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil

import pytest
from conftest import REPO, TRAINED, run_cli, tiny_flags
from inprocess import command

TINY = [
    "--data_dir=synthetic",
    "--synthetic_images_per_class=4",
    "--backbone=mobilenet",
    "--alpha=0.25",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=1",
    "--epochs_ft=1",
    "--head_units=8",
]
TABLE = REPO / "docs" / "bad_inputs.md"


def digest(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused(proc, *fragments, code=2):
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if code == 2:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1, proc.stderr[-2000:]
        text = lines[0]
    else:
        text = proc.stderr
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def fe_done(fe_done_workdir) -> pathlib.Path:
    """A workdir where `fe` finished (the session's: copy it before damaging it)."""
    return pathlib.Path(fe_done_workdir)


@pytest.fixture
def finished(trained_workdir) -> pathlib.Path:
    """A finished run, `tiny_flags(**TRAINED)` (the session's: copy it before damaging it)."""
    return pathlib.Path(trained_workdir)


# id -> (extra flags, fragments of the error line). The workdir is a fresh empty folder.
FLAG_CASES = {
    "unknown-backbone": (
        ["--backbone=resnet50"],
        ["unknown backbone 'resnet50'", "known backbones: efficientnet_b0"],
    ),
    "misspelt-backbone": (["--backbone=efficentnet_b0"], ["did you mean 'efficientnet_b0'"]),
    "image-size-too-small": (["--image_size=16"], ["image_size=16 is too small", "at least 32 px"]),
    "alpha-without-weights": (
        ["--alpha=0.3", "--weights=imagenet"],
        ["alpha=0.3", "0.25, 0.5, 0.75, 1"],
    ),
    "alpha-on-efficientnet": (
        ["--backbone=efficientnet_b0", "--alpha=0.5"],
        ["alpha=0.5 does not apply to efficientnet_b0"],
    ),
    "negative-epochs": (["--epochs_fe=-1"], ["epochs_fe=-1 is not allowed"]),
    "negative-checkpoint-every": (
        ["--checkpoint_every=-1"],
        ["checkpoint_every=-1.0 is not allowed", "0 (every epoch) or a number of seconds"],
    ),
    "lr-factor-too-small": (
        ["--ft_lr_factor=5"],
        ["ft_lr_factor=5 is outside [10, 100]", "--allow_any_lr_factor"],
    ),
    "lr-factor-too-large": (["--ft_lr_factor=500"], ["ft_lr_factor=500 is outside [10, 100]"]),
    "two-unfreeze-flags": (
        ["--unfreeze_blocks=2", "--unfreeze_layers=10"],
        ["--unfreeze_layers and --unfreeze_blocks both say what to unfreeze"],
    ),
    "bad-unfreeze": (["--unfreeze=top:3"], ["unfreeze='top:3'", "'blocks:K'"]),
    "unknown-phase": (["--phase=finetune"], ["--phase='finetune' is not a phase", "all, fe, ft"]),
    "missing-config-file": (
        ["--config=nope.toml"],
        ["config file 'nope.toml' does not exist", "configs/"],
    ),
    "ft-without-fe": (
        ["--phase=ft"],
        ["--phase=ft needs phase 'fe' done", "run --phase=fe there first"],
    ),
    "resume-and-overwrite": (["--resume", "--overwrite"], ["give only one"]),
    "doctor-unknown-mode": (
        ["--doctor=on"],
        ["doctor='on' is not allowed: one of auto, full, off"],
    ),
    "class-weight-unknown": (
        ["--class_weight=inverse"],
        ["class_weight='inverse' is not allowed: one of none, balanced"],
    ),
    "weights-missing-file": (
        ["--weights=nope.weights.h5"],
        ["weights file 'nope.weights.h5' does not exist", "'imagenet', 'none'"],
    ),
    "image-size-cannot-fit": (
        ["--image_size=100000"],
        [
            "image_size=100000 with batch_size=8 on mobilenet cannot fit in memory",
            "Lower --image_size",
        ],
    ),
    "layer-decay-groups-too-many": (
        ["--layer_decay=0.33", "--layer_decay_groups=20"],
        ["layer_decay_groups=20 is not allowed: the base has 14 blocks (stem .. block_13)"],
    ),
    "unreadable-budget": (
        ["--time_budget=10 minutes"],
        ["time_budget='10 minutes' is not understood", "90s, 10m, 1.5h or 1h30m"],
    ),
    "negative-budget": (["--time_budget=-5m"], ["time_budget='-5m' is not understood"]),
    "budget-too-small": (
        ["--time_budget=0.001s"],
        ["time_budget=0.001s cannot hold one epoch of each phase: estimated", "Give at least"],
    ),
    "unknown-recipe": (["--recipe=fast"], ["recipe='fast' is not allowed: one of auto, manual"]),
    "auto-field-wrong-type": (
        ["--epochs_ft=many"],
        ["'epochs_ft' in command line must be int, got 'many'", "'auto'"],
    ),
    "logical-cpus-too-many": (
        ["--logical_cpus=100000"],
        ["logical_cpus=100000 is not allowed: use 0 (off) or from 2 to 8 logical devices"],
    ),
    "ema-with-layer-decay": (
        ["--weight_averaging=ema", "--layer_decay=0.8"],
        ["weight_averaging='ema'", "use one of the two"],
    ),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_flag_case(case, tmp_path):
    extra, fragments = FLAG_CASES[case]
    workdir = tmp_path / "w"
    assert_refused(command(*TINY, *extra, f"--workdir={workdir}"), *fragments)
    assert not (workdir / "run.json").exists()
    assert not workdir.exists()  # a refusal leaves nothing it created, the workdir included


def test_unknown_config_field(tmp_path):
    config = tmp_path / "typo.toml"
    config.write_text(
        '# python -m tl_keras.train --config=typo.toml\nbackbone = "mobilenet"\nepochs_fee = 3\n'
    )
    assert_refused(
        command(f"--config={config}", f"--workdir={tmp_path / 'w'}"),
        "unknown config field 'epochs_fee'",
        "did you mean 'epochs_fe'",
    )


def test_unknown_flag(tmp_path):
    """absl's own refusal, before any of ours: a real process (`python -m tl_keras.train`)."""
    assert_refused(
        run_cli("--epochs_fee=3", f"--workdir={tmp_path}"),
        "Unknown command line flag 'epochs_fee'",
        code=1,
    )


def test_no_workdir():
    assert_refused(command(*TINY), "--workdir is required")


def test_workdir_other_backbone(fe_done):
    before = digest(fe_done)
    proc = command("--phase=ft", f"--workdir={fe_done}", "--backbone=mobilenet_v2", "--alpha=0.35")
    assert_refused(proc, "holds a different run", "backbone: saved 'tiny', given 'mobilenet_v2'")
    assert digest(fe_done) == before


def test_workdir_other_classes(fe_done, tmp_path):
    other = tmp_path / "other"
    for name in ("cats", "dogs"):
        shutil.copytree(fe_done / "data" / "synthetic" / "circle", other / name)
    before = digest(fe_done)
    proc = command("--phase=ft", f"--workdir={fe_done}", f"--data_dir={other}")
    assert_refused(
        proc,
        "holds a different run",
        "classes: saved 3 ['circle', 'square', 'triangle'], data has 2 ['cats', 'dogs']",
    )
    assert digest(fe_done) == before


def test_finished_workdir(finished):
    before = digest(finished)
    assert_refused(
        command(*tiny_flags(**TRAINED), f"--workdir={finished}"),
        "already holds a run (phases done: fe, ft)",
        "--resume",
        "--overwrite",
    )
    assert digest(finished) == before


def test_weights_other_architecture(tmp_path):
    import keras

    v2 = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    path = tmp_path / "v2.weights.h5"
    v2.save_weights(path)
    proc = command(*TINY, f"--weights={path}", f"--workdir={tmp_path / 'w'}")
    assert_refused(proc, f"weights file '{path}'", "fit mobilenet", "--backbone and --alpha")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert_refused(
        command(*TINY, f"--workdir={blocker / 'run'}"),
        "is not writable",
        "pass a --workdir you can write to",
    )
    assert blocker.read_text() == "not a folder"


def test_truncated_model(fe_done, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(fe_done, workdir)
    model = workdir / "fe" / "model.keras"
    model.write_bytes(model.read_bytes()[:2000])
    before = digest(workdir)
    assert_refused(
        command("--phase=ft", f"--workdir={workdir}"),
        "cannot load",
        "fe/model.keras",
        "rerun phase 'fe'",
    )
    assert digest(workdir) == before


def test_damaged_run_json(fe_done, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(fe_done, workdir)
    (workdir / "run.json").write_text('{"format": 1, "backb')
    before = digest(workdir)
    assert_refused(
        command("--phase=ft", f"--workdir={workdir}"),
        "run.json is damaged (not valid JSON, truncated or edited",
        "start it again with --overwrite",
    )
    assert digest(workdir) == before


def test_run_json_a_list(fe_done, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(fe_done, workdir)
    (workdir / "run.json").write_text("[]")
    before = digest(workdir)
    assert_refused(
        command("--phase=ft", f"--workdir={workdir}"),
        f"{workdir}/run.json is damaged (the file is a JSON list, not an object)",
        "start it again with --overwrite, or use another --workdir",
    )
    assert digest(workdir) == before


def test_compare_zero_seeds(tmp_path):
    proc = command(*TINY, "--seeds=0", f"--workdir={tmp_path / 'w'}", module="tl_keras.compare")
    assert_refused(proc, "seeds=0 must be a whole number of at least 1")
    assert not (tmp_path / "w" / "comparison.md").exists()


def test_damaged_inference_section(fe_done, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(fe_done, workdir)
    run = json.loads((workdir / "run.json").read_text())
    run["inference"] = {"temperature": -1, "tta": "none", "phase": "fe"}
    (workdir / "run.json").write_text(json.dumps(run))
    image = next((workdir / "data" / "synthetic").rglob("*.png"))
    before = digest(workdir)
    assert_refused(
        command(f"--workdir={workdir}", str(image), module="tl_keras.predict"),
        "inference temperature=-1 must be a finite number > 0",
        "the workdir is damaged",
    )
    assert digest(workdir) == before


def read_only_command(folder: pathlib.Path, module: str, *args: str):
    """Runs a command with `folder` read-only: a read-only bind mount of its own (root, where
    permission bits do not stop writes), else the permission bits; skips where neither works."""
    import subprocess
    import sys

    command = [sys.executable, "-m", module, *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    f = str(folder)
    mount = f'mount --bind {f} {f} && mount -o remount,bind,ro {f} {f} && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot make {folder} read-only here: {probe.stderr[-200:]!r}")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, "sh", *command],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_read_only_workdir_evaluate(finished, tmp_path):
    before = digest(finished)
    proc = read_only_command(finished, "tl_keras.evaluate", f"--workdir={finished}", "--split=val")
    assert_refused(
        proc,
        f"cannot write to {finished}/evaluation/val (Read-only file system",
        "pass --out_dir=FOLDER to write the results elsewhere",
    )
    out = tmp_path / "eval"
    proc = read_only_command(
        finished, "tl_keras.evaluate", f"--workdir={finished}", "--split=val", f"--out_dir={out}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.json").is_file()
    assert digest(finished) == before


def test_read_only_workdir_export(finished):
    proc = read_only_command(finished, "tl_keras.export", f"--workdir={finished}")
    assert_refused(proc, f"cannot write to {finished}/export (", "pass --out_dir=FOLDER")


def test_unsafe_model_file(finished, tmp_path):
    import keras

    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(
        workdir / "ft" / "model.keras"
    )
    image = next((workdir / "data" / "synthetic" / "circle").glob("*.png"))
    proc = command(f"--workdir={workdir}", str(image), module="tl_keras.predict")
    assert_refused(
        proc,
        "ft/model.keras asks to run Python code when it is loaded",
        "If you made it yourself and trust it, pass --trust_model_code",
    )
    proc = command(
        f"--workdir={workdir}", "--trust_model_code", str(image), module="tl_keras.predict"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert image.name in proc.stdout


# --- data the doctor can only partly use: exit 0, and the report says what it could not do -----
def doctor_summary(proc) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("doctor: "))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    from doctor_fixtures import base_weights

    return base_weights(tmp_path_factory.mktemp("weights") / "tiny.weights.h5")


def test_doctor_too_small(tmp_path, weights_file):
    from doctor_fixtures import flags, noise_tree

    small_class = noise_tree(tmp_path / "one", {"ant": 12, "bee": 12, "cat": 2})
    proc = command(*flags(small_class, weights_file), f"--workdir={tmp_path / 'w1'}",
                   module="tl_keras.doctor")  # fmt: skip
    assert doctor_summary(proc).endswith("(1 limit: see report)")
    limits = json.loads((tmp_path / "w1" / "doctor" / "report.json").read_text())["limits"]
    assert limits == [
        "class cat has fewer than 5 images: too few to learn from or to vote on, so its images "
        "get no label-error or outlier verdict (duplicates and balance are checked)"
    ]
    tiny = noise_tree(tmp_path / "two", {"ant": 2, "bee": 2})
    proc = command(*flags(tiny, weights_file), "--val_fraction=0", f"--workdir={tmp_path / 'w2'}",
                   module="tl_keras.doctor")  # fmt: skip
    summary = doctor_summary(proc)
    assert "label errors not checked" in summary and summary.endswith("(2 limits: see report)")
    limits = json.loads((tmp_path / "w2" / "doctor" / "report.json").read_text())["limits"]
    assert limits[0].startswith("4 images in 2 classes: too few for label-error and outlier")
    assert limits[1].startswith("4 images: too few neighbours for near-duplicates")
    assert "What could not be checked" in (tmp_path / "w2" / "doctor" / "report.md").read_text()


def test_doctor_stale_features(tmp_path, weights_file):
    from doctor_fixtures import flags, noise_png, noise_tree

    tree = noise_tree(tmp_path / "data", {"ant": 8, "bee": 8})
    args = (*flags(tree, weights_file), f"--workdir={tmp_path / 'w'}")
    doctor_summary(command(*args, module="tl_keras.doctor"))
    (tree / "ant" / "ant_2.png").write_bytes(noise_png(12345))  # same name, new content
    proc = command(*args, module="tl_keras.doctor")
    doctor_summary(proc)
    assert "are stale (1 of 16 images are new or changed): recomputing them" in proc.stdout
    report = json.loads((tmp_path / "w" / "doctor" / "report.json").read_text())
    assert report["features"]["computed"]


def test_table_and_tests_match():
    """Every documented case has a test here, and every test here is documented."""
    text = TABLE.read_text()
    bad_input = text.split("\n## ")[0]  # the first table; a run that meets trouble is below
    doctor = text.split("\n## Data the doctor can only partly use", 1)[1]  # the doctor's table
    documented = {
        *re.findall(r"^\| `([a-z0-9-]+)` \|", bad_input, flags=re.M),
        *re.findall(r"^\| `([a-z0-9-]+)` \|", doctor, flags=re.M),
    }
    tested = set(FLAG_CASES) | {
        name.removeprefix("test_").replace("_", "-")
        for name in globals()
        if name.startswith("test_")
        and name
        not in ("test_flag_case", "test_table_and_tests_match", "test_every_row_has_its_test")
    }
    assert documented == tested, (
        f"only documented: {documented - tested}; only tested: {tested - documented}"
    )
    assert os.path.isfile(TABLE)


def test_every_row_has_its_test():
    """The second table (a run that meets trouble) names each row's test: it exists."""
    rows = TABLE.read_text().split("\n## ", 1)[1]
    cited = re.findall(r"`(tests/[a-z_]+\.py)::(test_[a-z0-9_]+)`", rows)
    assert len(cited) >= 15
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), flags=re.M), (path, name)
