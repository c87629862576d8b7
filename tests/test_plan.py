"""The run's plan: which phases run from which state of the workdir, and every refusal, decided
from the workdir's small files alone (no TensorFlow), like the recipe."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config

from tl_keras import config as config_lib
from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.training.plan import check_same_run, plan_run

STAGES = "fe:none:1,ft1:blocks:1:1,ft2:all:1"


def spec(**overrides):
    return config_lib.check(tiny_config(**overrides))


def fake_run(workdir, done, **identity):
    """A run.json as a run that finished the phases `done` leaves it (nothing else on disk)."""
    s = spec(stages=STAGES)
    run = {
        **s.identity,
        **identity,
        "class_names": ["a", "b"],
        "phases": {name: {"last_epoch": i + 1} for i, name in enumerate(done)},
        "schedule": [p.to_dict() for p in config_lib.build_schedule(s.given)],
        "format": 1,
    }
    (workdir / "run.json").write_text(json.dumps(run))
    (workdir / "config.json").write_text(config_lib.to_json(s.given))  # as given


def test_a_new_workdir_runs_every_phase(tmp_path):
    plan = plan_run(spec(stages=STAGES), str(tmp_path / "new"))
    assert list(plan.targets) == ["fe", "ft1", "ft2"]
    assert plan.previous is None and plan.run is None and plan.chief


def test_a_later_phase_starts_from_the_one_before(tmp_path):
    fake_run(tmp_path, ["fe", "ft1"])
    plan = plan_run(spec(stages=STAGES), str(tmp_path), phase="ft2")
    assert list(plan.targets) == ["ft2"] and plan.previous == "ft1"


@pytest.mark.parametrize(
    "done, kwargs, match",
    [
        (["fe"], {}, r"already holds a run \(phases done: fe\); rerun with --resume"),
        ([], {"phase": "ft2"}, "--phase=ft2 needs phase 'ft1' done .* which has nothing"),
        (["fe", "ft1"], {"phase": "ft1"}, r"phase\(s\) ft1 already done .* --overwrite"),
    ],
)
def test_refusals(tmp_path, done, kwargs, match):
    fake_run(tmp_path, done)
    with pytest.raises(WorkdirError, match=match):
        plan_run(spec(stages=STAGES), str(tmp_path), **kwargs)


def test_resume_refuses_another_config_and_finds_nothing_left(tmp_path):
    fake_run(tmp_path, ["fe", "ft1", "ft2"])
    with pytest.raises(WorkdirError, match="ft_lr_factor: saved 'auto', given 20.0"):
        plan_run(spec(stages=STAGES, ft_lr_factor=20.0), str(tmp_path), resume=True)
    assert plan_run(spec(stages=STAGES), str(tmp_path), resume=True).nothing_to_do
    with pytest.raises(ConfigError, match="give only one"):
        plan_run(spec(stages=STAGES), str(tmp_path), resume=True, overwrite=True)


def test_check_same_run_names_each_field_and_the_classes(tmp_path):
    fake_run(tmp_path, ["fe"], head_units=16)
    run = json.loads((tmp_path / "run.json").read_text())
    with pytest.raises(WorkdirError, match=r"head_units: saved 16, given 8; classes: saved 2"):
        check_same_run(run, spec(stages=STAGES).identity, ["a", "c"], str(tmp_path))


def test_the_plan_and_its_refusals_import_no_tensorflow(tmp_path):
    script = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_config\n"
        "from tl_keras import config\n"
        "from tl_keras.errors import WorkdirError\n"
        "from tl_keras.training.plan import plan_run\n"
        f"plan_run(config.check(tiny_config()), {str(tmp_path / 'w')!r})\n"
        "try:\n"
        f"    plan_run(config.check(tiny_config()), {str(tmp_path / 'w')!r}, phase='ft')\n"
        "except WorkdirError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
