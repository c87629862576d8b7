"""What a run promises when things go wrong: damaged files, --overwrite, divergence, memory,
permissions, leftovers, hostile files, data that changes, clocks that jump.

One tiny run is trained once for the module (an .npz data set whose class names look like
paths), interrupted after its first checkpoint (`interrupted`) and then resumed to the end
(`finished`); every test damages a copy. Each damaged file must give one `DamagedFileError`
naming the file, what is wrong and the way out, through the function the command really calls.
"""

import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, tiny_config

from tl_keras import config as config_lib
from tl_keras import interrupt, io, schema
from tl_keras.errors import DamagedFileError, TrainingError, WorkdirError
from tl_keras.training import checkpoint, plan
from tl_keras.training.runner import train
from tl_keras.workdir import Workdir

CLASSES = ["circle", "../../escape", "C:\\evil"]  # names, never paths
ELAPSED: dict[str, float] = {}  # seconds the `finished` fixture's resume took


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def arrays(base) -> str:
    rng = np.random.default_rng(0)
    path = base / "data.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
        y_train=np.repeat(np.arange(3), 8),
        class_names=np.array(CLASSES),
    )
    return str(path)


def cfg(arrays, **overrides):
    values = dict(
        data_dir=arrays,
        epochs_fe=2,
        epochs_ft=1,
        early_stopping_patience=2,
        rollback="val_accuracy",
        val_fraction=0.25,
        checkpoint_every=0,  # the tests below read the checkpoint of a given epoch
    )
    return tiny_config(**{**values, **overrides})


class StopAtEpoch(keras.callbacks.Callback):
    """SIGTERM's effect at the start of a global epoch: the checkpoint before it is the last."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise interrupt.Interrupted(signal.SIGTERM)


@pytest.fixture(scope="module")
def interrupted(base, arrays) -> pathlib.Path:
    """Stopped after fe's first epoch: run.json, config.json and checkpoint epoch-00001 (with
    early stopping's and rollback's best weights)."""
    workdir = base / "interrupted"
    with pytest.raises(interrupt.Interrupted):
        train(cfg(arrays), str(workdir), callbacks=[StopAtEpoch(2)])
    assert checkpoint.latest(str(workdir)).epoch == 1
    return workdir


@pytest.fixture(scope="module")
def finished(base, arrays, interrupted) -> pathlib.Path:
    """The interrupted run resumed to the end, with a killed writer's leftover planted first and
    the wall clock jumping a day back and forth on every reading meanwhile."""
    workdir = base / "finished"
    shutil.copytree(interrupted, workdir)
    dead = subprocess.run([sys.executable, "-c", "print(__import__('os').getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    leftover = workdir / f".curves.png.tmp-{int(dead.stdout)}-0123abcd.png"
    leftover.write_bytes(b"")
    real, flip = time.time, [0]

    def jumping() -> float:
        flip[0] += 1
        return real() + (86400 if flip[0] % 2 else -86400)

    start = time.perf_counter()
    time.time = jumping
    try:
        train(cfg(arrays), str(workdir), resume=True)
    finally:
        time.time = real
    ELAPSED["finished"] = time.perf_counter() - start
    assert not leftover.exists()  # --resume cleaned what the killed writer left
    return workdir


def copy(src: pathlib.Path, tmp_path) -> pathlib.Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def assert_damaged(excinfo, path: pathlib.Path, *fragments: str) -> None:
    text = str(excinfo.value)
    assert "\n" not in text and text.startswith(f"{path} is damaged ("), text
    for fragment in fragments:
        assert fragment in text, text


# --- 3. every file read back is checked ------------------------------------------------------
def rewrite(path: pathlib.Path, change) -> None:
    if change == "truncate":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif change == "list":
        path.write_text("[]")
    else:
        value = json.loads(path.read_text())
        change(value)
        path.write_text(json.dumps(value))


RUN_DAMAGE = {
    "a-list": ("list", "the file is a JSON list, not an object"),
    "truncated": ("truncate", "not valid JSON, truncated or edited"),
    "missing-key": (lambda r: r.pop("class_names"), "'class_names' is missing"),
    "wrong-type": (lambda r: r.update(phases="fe"), "'phases' is a string, not an object"),
    "phase-as-path": (
        lambda r: r["phases"].update({"../../x": {"last_epoch": 1}}),
        "a key of 'phases' is '../../x', not a plain name",
    ),
}


@pytest.mark.parametrize("case", list(RUN_DAMAGE))
def test_damaged_run_json(case, interrupted, arrays, tmp_path):
    workdir = copy(interrupted, tmp_path)
    change, problem = RUN_DAMAGE[case]
    rewrite(workdir / "run.json", change)
    with pytest.raises(DamagedFileError) as e:
        plan.plan_run(config_lib.check(cfg(arrays)), str(workdir), resume=True)
    assert_damaged(e, workdir / "run.json", problem, "start it again with --overwrite")


STATE_DAMAGE = {
    "a-list": ("list", "the file is a JSON list, not an object"),
    "truncated": ("truncate", "not valid JSON"),
    "wrong-type": (lambda s: s.update(epoch="1"), "'epoch' is a string, not an integer"),
    "missing-key": (lambda s: s.pop("history"), "'history' is missing"),
    "nested": (lambda s: s["early_stopping"].pop("wait"), "'early_stopping'.wait is missing"),
    "history": (lambda s: s["history"][0].update(epoch=5), "epoch 1 does not match its history"),
}


@pytest.mark.parametrize("case", list(STATE_DAMAGE))
def test_damaged_checkpoint_state(case, interrupted, arrays, tmp_path):
    workdir = copy(interrupted, tmp_path)
    path = workdir / "checkpoints" / "epoch-00001" / "state.json"
    change, problem = STATE_DAMAGE[case]
    rewrite(path, change)
    with pytest.raises(DamagedFileError) as e:
        plan.plan_run(config_lib.check(cfg(arrays)), str(workdir), resume=True)
    assert_damaged(e, path, problem, "remove that checkpoint folder", "or use --overwrite")


def test_damaged_saved_config(interrupted, arrays, tmp_path):
    workdir = copy(interrupted, tmp_path)
    rewrite(workdir / "config.json", lambda c: c.update(lr="fast"))
    with pytest.raises(DamagedFileError) as e:
        config_lib.merged({}, workdir=str(workdir), resume=True)
    assert_damaged(e, workdir / "config.json", "config field 'lr' must be float", "--overwrite")


def npz_truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def npz_other_shapes(path):
    np.savez(path, np.zeros(3), np.zeros(4))


CHECKPOINT_FILES = {
    # file in the checkpoint, damage, what the message says
    "rng_state.json": (lambda p: p.write_text("[1, 2]"), "a JSON list, not an object"),
    "best_weights.npz": (npz_truncate, "unreadable"),
    "best_rollback.npz": (npz_other_shapes, "2 arrays that do not fit the model's"),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_FILES))
def test_damaged_checkpoint_files(name, interrupted, arrays, tmp_path):
    """Through --resume itself: the checkpoint's model loads, then each file is checked."""
    workdir = copy(interrupted, tmp_path)
    path = workdir / "checkpoints" / "epoch-00001" / name
    damage, problem = CHECKPOINT_FILES[name]
    damage(path)
    with pytest.raises(DamagedFileError) as e:
        train(cfg(arrays), str(workdir), resume=True)
    assert_damaged(e, path, problem, "remove that checkpoint folder")


PHASE_FILES = {
    "history.json": (lambda r: r["records"][0].update(epoch="one"), "is a string, not an integer"),
    "fe/summary.json": (
        lambda s: s.update(rollback_reference=[1]),
        "'rollback_reference' is a JSON list, not an object",
    ),
    "fe/rng_state.json": (lambda r: r.update(x=1), "'x' is a number, not a list"),
}


@pytest.mark.parametrize("name", list(PHASE_FILES))
def test_damaged_files_of_a_finished_phase(name, finished, arrays, tmp_path):
    """--phase=ft --overwrite reads what fe saved: its model, RNG states, history, summary."""
    workdir = copy(finished, tmp_path)
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    change, problem = PHASE_FILES[name]
    rewrite(workdir / name, change)
    with pytest.raises(DamagedFileError) as e:
        train(cfg(arrays), str(workdir), phase="ft", overwrite=True)
    assert_damaged(e, workdir / name, problem, "rerun phase 'fe' (--phase=fe --overwrite)")
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before


def test_damaged_files_for_the_readers(finished, tmp_path):
    from tl_keras.inference.export.manifest import verify_workdir
    from tl_keras.inference.trained import load_trained, run_config

    workdir = copy(finished, tmp_path)
    rewrite(workdir / "config.json", "list")
    with pytest.raises(DamagedFileError) as e:
        run_config(str(workdir))
    assert_damaged(e, workdir / "config.json", "a JSON list", "start the run again")
    rewrite(workdir / "run.json", lambda r: r.update(image_size="32"))
    with pytest.raises(DamagedFileError) as e:
        load_trained(str(workdir))
    assert_damaged(e, workdir / "run.json", "'image_size' is a string, not an integer")
    # A manifest cannot send verify outside its folder.
    (workdir / "export").mkdir()
    manifest = workdir / "export" / "export.json"
    manifest.write_text(json.dumps({"artifacts": {"../../../etc/passwd": {"format": "tflite"}}}))
    with pytest.raises(DamagedFileError) as e:
        verify_workdir(str(workdir))
    assert_damaged(e, manifest, "'../../../etc/passwd'", "not an artifact export writes")


def test_every_schema_problem_is_worded():
    shape = schema.Obj({"a": schema.ListOf(schema.Int)}, optional={"b": schema.Maybe(schema.Num)})
    assert schema.problem({"a": [1, 2], "b": None}, shape) is None
    assert schema.problem({"a": [1, True]}, shape) == "'a'[1] is true/false, not an integer"
    assert schema.problem({"a": [], "b": "x"}, shape) == "'b' is a string, not a number"
    assert schema.problem([], shape) == "the file is a JSON list, not an object"
    assert schema.problem({"a": [], "b": 1.5}, shape) is None


# --- 6. --overwrite replaces the run only once the new one has finished a phase -----------------
def test_overwrite_keeps_the_replaced_run_until_a_phase_is_done(finished, arrays, tmp_path, caplog):
    workdir = copy(finished, tmp_path)
    model = (workdir / "ft" / "model.keras").read_bytes()
    run_before = (workdir / "run.json").read_bytes()
    with caplog.at_level("INFO", logger="tl_keras"), pytest.raises(TrainingError) as e:
        train(cfg(arrays, lr=1e6), str(workdir), overwrite=True)  # diverges in fe
    # 5. divergence with a finite loss: stopped, with the phase's learning rate named.
    assert "the loss diverged to" in str(e.value) and "phase 'fe', epoch 1" in str(e.value)
    assert "The phase's learning rate, 1e+06, is too high" in str(e.value)
    # The new run trained in a staging folder; the workdir still holds the old run, untouched.
    assert f"is staged in {workdir / '.replacement' / 'new'}" in caplog.text
    assert str(e.value).endswith(
        f"Nothing was replaced: {workdir} still holds the run --overwrite was replacing "
        "(phases done: fe, ft), untouched"
    )
    assert (workdir / "ft" / "model.keras").read_bytes() == model  # bitwise the replaced run
    assert (workdir / "run.json").read_bytes() == run_before
    assert list(json.loads((workdir / "run.json").read_text())["phases"]) == ["fe", "ft"]
    assert not (workdir / ".replacement").exists() and Workdir(str(workdir)).replaced() == []
    # The next command sees the old run as it was: refused without --overwrite or --resume.
    with pytest.raises(WorkdirError, match=r"already holds a run \(phases done: fe, ft\)"):
        plan.plan_run(config_lib.check(cfg(arrays)), str(workdir))
    # A run that finishes its first phase replaces it.
    with caplog.at_level("INFO", logger="tl_keras"):
        train(cfg(arrays, rollback=""), str(workdir), phase="fe", overwrite=True)
    assert f"this run finished phase 'fe', so {workdir} now holds it" in caplog.text
    assert list(json.loads((workdir / "run.json").read_text())["phases"]) == ["fe"]
    assert not (workdir / "ft").exists() and not (workdir / ".replacement").exists()


def test_overwrite_of_a_finished_ft_keeps_it(finished, arrays, tmp_path):
    workdir = copy(finished, tmp_path)
    model = (workdir / "ft" / "model.keras").read_bytes()
    fe_model = (workdir / "fe" / "model.keras").read_bytes()
    # ft on the head alone (its rate is then --lr's): on `tiny`, an ft of blocks:2 at 1e6
    # overflows the weights before the loss, a problem the message words otherwise.
    with pytest.raises(TrainingError, match=r"in phase 'ft'.*learning rate, 1e\+06"):
        train(cfg(arrays, lr=1e6, unfreeze="none"), str(workdir), phase="ft", overwrite=True)
    assert (workdir / "ft" / "model.keras").read_bytes() == model
    assert (workdir / "fe" / "model.keras").read_bytes() == fe_model
    assert list(json.loads((workdir / "run.json").read_text())["phases"]) == ["fe", "ft"]
    assert not (workdir / ".replacement").exists()


# --- 5. the divergence guard on its own -------------------------------------------------------------
def guard_epochs(losses, *, weights_scale=None):
    """Feeds epoch losses to a guard on a tiny 3-class model; returns (epoch, problem) or None."""
    from tl_keras.training.callbacks import NonFiniteGuard

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    guard = NonFiniteGuard()
    guard.set_model(model)
    guard.on_train_begin()
    for epoch, loss in enumerate(losses):
        guard.on_epoch_begin(epoch)
        if weights_scale and epoch == len(losses) - 1:
            model.layers[-1].kernel.assign(model.layers[-1].kernel * weights_scale)
        guard.on_epoch_end(epoch, {"loss": loss})
        if guard.bad:
            return guard.bad[0], guard.bad[2]
    return None


def test_the_divergence_guard_is_conservative():
    # Normal runs: a high first epoch that falls, a fine-tuning bump, a noisy plateau, a slow
    # rise that stays below 10x its lowest (overfitting-style), warm-up from a high start.
    for losses in (
        [9.0, 3.0, 1.2, 0.8, 0.7],
        [0.3, 0.9, 0.6, 0.4],
        [0.5, 0.51, 0.52, 0.53, 0.54, 0.55],
        [0.1, 0.2, 0.3, 0.5, 0.8],
        [50.0, 20.0, 4.0],
    ):
        assert guard_epochs(losses) is None, losses
    assert guard_epochs([1.1, 2.2e5])[0] == 2  # far above chance (ln 3)
    epoch, problem = guard_epochs([0.3, 0.6, 1.2, 2.5, 4.0])  # rising 4 epochs to 13x its lowest
    assert epoch == 5 and "rose 4 epochs in a row" in problem
    epoch, problem = guard_epochs([1.0, 0.9], weights_scale=1e5)
    assert epoch == 2 and "the weights exploded" in problem


# --- 7. input that cannot fit ---------------------------------------------------------------------
def test_the_memory_floor_is_a_lower_bound_and_normal_runs_fit():
    from tl_keras.model import backbones

    spec = config_lib.check(
        tiny_config(backbone="mobilenet", alpha=0.25, image_size=64, batch_size=8)
    )
    need = backbones.memory_estimate(spec.model.backbone, image_size=64, batch_size=8, alpha=0.25)
    base = backbones.build_base(spec.model.backbone, image_size=64, weights=None, alpha=0.25)
    largest = max(int(np.prod(layer.output.shape[1:])) for layer in base.layers)
    assert need.floor >= 8 * largest * 4 + base.count_params() * 4
    assert need.floor < need.step
    plan.check_memory(config_lib.check(config_lib.Config(data_dir="synthetic")))  # 224, 32
    with pytest.raises(config_lib.ConfigError, match="cannot fit in memory: one batch needs"):
        plan.check_memory(spec, available=need.floor - 1)


def test_the_footprint_table_is_what_the_models_measure():
    """`python benchmarks/backbone_footprint.py` reproduces the table (three of its rows here)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import backbone_footprint

    from tl_keras.model import backbones

    for name in ("mobilenet", "mobilenet_v3_small", "tiny"):
        peak, total, params = backbone_footprint.footprint(name)
        assert backbones._FOOTPRINT[name] == (round(peak, 2), round(total, 1), params)


# --- 8. artifacts follow the umask ------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_artifact_follows_the_umask(umask, finished, arrays, tmp_path):
    """Models, JSON, PNG, CSV, checkpoints, exports, evaluation: 0666 / 0777 minus the umask."""
    from tl_keras.inference.evaluate import evaluate_workdir
    from tl_keras.inference.export.manifest import export_workdir
    from tl_keras.training.history import History

    workdir = tmp_path / "run"
    old = os.umask(umask)
    try:
        train(cfg(arrays, epochs_fe=1, epochs_ft=1, rollback=""), str(workdir))
        model = keras.models.load_model(workdir / "ft" / "model.keras")  # with its optimizer
        checkpoint.write(str(workdir), model, checkpoint.CheckpointState(
            phase="ft", epoch=2, phase_first_epoch=2, finished_phase=True, stopped_early=False,
            wall_time_s=1.0, history=History.load(str(workdir / "history.json"))))  # fmt: skip
        export_workdir(str(workdir), formats=["saved_model", "tflite"], num_parity_images=2)
        evaluate_workdir(str(workdir), split="val")
    finally:
        os.umask(old)
    kinds = {".keras", ".json", ".png", ".csv", ".tflite", ".pb", ".npz"}
    seen = set()
    for path in [workdir, *workdir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.is_file() and path.suffix not in kinds and "variables" not in path.name:
            continue
        seen.add(path.suffix if path.is_file() else "dir")
        assert mode == want, f"{path.relative_to(workdir)}: {oct(mode)}, not {oct(want)}"
    assert {".keras", ".json", ".png", ".csv", ".tflite", ".pb", "dir"} <= seen, seen


# --- 9. leftovers ------------------------------------------------------------------------------------
def test_leftovers_of_dead_writers_go_and_a_set_aside_folder_comes_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "print(__import__('os').getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    (tmp_path / f".saved_model.old-{pid}-0123abcd").mkdir()  # killed between its two renames
    (tmp_path / f".saved_model.old-{pid}-0123abcd" / "saved_model.pb").write_text("old")
    (tmp_path / f".model.tflite.tmp-{pid}-0123abcd.tflite").write_text("")
    (tmp_path / f".model.onnx.tmp-{os.getpid()}-0123abcd.onnx").write_text("")  # alive: mine
    (tmp_path / "user.tmp-1-notours").write_text("")  # not the package's name
    removed = io.remove_leftovers(str(tmp_path))
    assert sorted(removed) == sorted(
        [f".saved_model.old-{pid}-0123abcd", f".model.tflite.tmp-{pid}-0123abcd.tflite"]
    )
    assert (tmp_path / "saved_model" / "saved_model.pb").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["saved_model", f".model.onnx.tmp-{os.getpid()}-0123abcd.onnx", "user.tmp-1-notours"]
    )


# --- the attacker's and the unlucky user's battery ------------------------------------------------
def test_class_names_that_look_like_paths_stay_names(base, finished):
    """The run trained on classes named '../../escape' and 'C:\\evil': nothing outside it."""
    assert json.loads((finished / "run.json").read_text())["class_names"] == CLASSES
    outside = {p.name for p in base.iterdir()}
    assert outside <= {"data.npz", "interrupted", "finished"}, outside
    assert not list(base.parent.glob("escape*"))


def test_class_names_that_would_break_a_line_are_refused():
    from tl_keras.data import sources
    from tl_keras.errors import DataError

    for names in (["a", "b\nc"], ["a", ""], ["a", "a"]):
        with pytest.raises(DataError, match="class names must be distinct, printable"):
            sources.check_class_names(names, "data.npz")


def lambda_model(marker: pathlib.Path) -> keras.Model:
    """A model of the run's shapes whose Lambda layer writes `marker` when it runs."""
    inputs = keras.Input((32, 32, 3), name="image")
    code = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    x = keras.layers.Lambda(eval(code))(inputs)  # noqa: S307  (the attack under test)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_a_model_file_that_runs_code_is_refused_unless_trusted(finished, tmp_path):
    from tl_keras.inference.trained import load_trained
    from tl_keras.model.classifier import UnsafeModelError

    workdir = copy(finished, tmp_path)
    marker = tmp_path / "code-ran"
    lambda_model(marker).save(workdir / "ft" / "model.keras")
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeModelError) as e:
        load_trained(str(workdir))
    text = str(e.value)
    assert "asks to run Python code when it is loaded" in text and "\n" not in text
    assert "pass --trust_model_code (trust_code=True)" in text
    assert not marker.exists()  # refused before any of it ran
    trusted = load_trained(str(workdir), trust_code=True)  # the user's own file
    trusted.model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    assert marker.exists()


def test_the_clock_jumping_does_not_change_durations(finished):
    """`finished` ran while the wall clock jumped a day on every reading: durations come from
    a monotonic clock, and the package never reads the wall clock for one."""
    assert time.get_clock_info("perf_counter").monotonic
    for phase in ("fe", "ft"):
        wall = json.loads((finished / phase / "summary.json").read_text())["wall_time_s"]
        assert 0 <= wall < ELAPSED["finished"] + 60, (phase, wall)
    uses = [
        str(p.relative_to(REPO))
        for p in (REPO / "tl_keras").rglob("*.py")
        if "time.time()" in p.read_text(encoding="utf-8")
    ]
    assert uses == []


def test_damaged_caches_are_rebuilt(arrays, finished, tmp_path, caplog):
    """A cache is a shortcut, not a record: a damaged one is rebuilt, with a warning."""
    from tl_keras.data.sources import load_data
    from tl_keras.training import features
    from tl_keras.training.start import load_phase_model

    spec = config_lib.check(cfg(arrays, cache="file"))
    data = load_data(spec, workdir=str(tmp_path))  # writes the file cache
    (manifest,) = (tmp_path / "data" / "cache").glob("train-*/manifest.json")
    manifest.write_text(json.dumps({"kept": [999], "skipped": [], "sizes": []}))
    with caplog.at_level("WARNING", logger="tl_keras"):
        again = load_data(spec, workdir=str(tmp_path))
    assert "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert again.num_train == data.num_train

    model = load_phase_model(Workdir(str(finished)), "fe")
    features._MEMORY.clear()  # the fixture's run left its features in this process's memory
    first, _, reused = features.compute(model, data, mode="file", workdir=str(tmp_path))
    every = np.arange(data.num_train)
    expected = first["train"].take(every)  # read before the file under its memory map is cut
    del first
    (shard,) = (tmp_path / "cache" / "features").glob("*/train-00000.npy")
    shard.write_bytes(shard.read_bytes()[:200])
    features._MEMORY.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="tl_keras"):
        second, _, reused = features.compute(model, data, mode="file", workdir=str(tmp_path))
    assert not reused and "the feature cache" in caplog.text and "computing it again" in caplog.text
    np.testing.assert_array_equal(expected, second["train"].take(every))


def test_data_that_changes_while_a_run_reads_it(tmp_path):
    """Files removed between listing and decoding are skipped and counted; files removed or
    emptied while training runs stop it with one line naming them, the checkpoint kept."""
    from tl_keras.data.bundle import stratified_split
    from tl_keras.data.sources import list_image_folder
    from tl_keras.data.sources.synthetic import make_shapes

    photos = pathlib.Path(make_shapes(str(tmp_path / "photos"), images_per_class=10, image_size=32))
    listing = list_image_folder(str(photos))
    _, val = stratified_split(listing.labels, 0.2, 0)  # read at every epoch's validation
    files = [pathlib.Path(listing.files[i]) for i in val]
    workdir, pause = tmp_path / "run", tmp_path / "pause"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "TL_KERAS_FAILPOINT": "pause:data_listed,pause:after_checkpoint:2",
           "TL_KERAS_PAUSE_FILE": str(pause)}  # fmt: skip
    args = ["--backbone=tiny", "--weights=none", "--image_size=32",
            "--batch_size=8", "--epochs_fe=1", "--epochs_ft=2", "--head_units=8",
            "--progress=lines", "--max_skipped_fraction=0.2", "--checkpoint_every=0",
            "--cache=none",  # read from the files every epoch ('auto' holds so few in memory)
            f"--data_dir={photos}",
            f"--workdir={workdir}"]  # fmt: skip
    out, err = (tmp_path / "out").open("w"), (tmp_path / "err").open("w")
    child = subprocess.Popen([sys.executable, "-m", "tl_keras.train", *args], cwd=REPO, env=env,
                             stdout=out, stderr=err)  # fmt: skip

    def paused() -> None:
        deadline = time.monotonic() + 300
        while not pause.exists():
            assert child.poll() is None, (tmp_path / "err").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)

    paused()  # listed, nothing read yet
    files[0].unlink()
    pause.unlink()
    paused()  # ft's first epoch checkpointed
    files[-1].write_bytes(b"")
    files[-2].unlink()
    pause.unlink()
    assert child.wait(timeout=300) == 1
    out.close(), err.close()
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert (
        "SKIPPED 1 image file(s)" in stdout and f"{files[0].parent.name}/{files[0].name}" in stdout
    )
    assert "Traceback" not in stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert "the data changed while the run read it:" in line
    assert f"{files[-1]} (now empty)" in line and f"{files[-2]} (removed)" in line
    assert "continue with --resume" in line
    assert checkpoint.latest(str(workdir)).epoch == 2
