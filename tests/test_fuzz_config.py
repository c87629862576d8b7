"""Property-based fuzzing of the config surface: generated flags and TOML files, in process.

Every generated `python -m tl_keras.train` command (tests/fuzz_config_cases.py: the cases and
the property) ends in a planned run, or in exactly one `error:` line naming what was given at
fault with exit status 2 (absl's own refusal of an unknown flag or an unparsable value: exit 1,
one line naming the flag), never a traceback, the workdir untouched. The budget is fixed and
the examples derandomized, so the suite runs the same commands every time; the `@example`s are
what the fuzzing found, each fixed (benchmarks/fuzz_config.py runs the same properties with a
large budget; docs/reliability.md, "Fuzzing the config surface").
"""

import math

import fuzz_config_cases as fz
import pytest
from hypothesis import HealthCheck, example, given, settings

Case = fz.Case
BUDGET = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BASE = fz._base_flags(set())


@pytest.fixture(scope="module")
def sandbox():
    box = fz.Sandbox()
    yield box
    box.close()


def assert_kept(sandbox, case: Case) -> None:
    outcome, before, after = fz.run_case(sandbox, case)
    problem = fz.check_outcome(case, outcome, before, after)
    assert problem is None, f"{case.describe()}\n{problem}"


@settings(BUDGET, max_examples=200)
@given(case=fz.any_case())
# A config file that is not UTF-8, and one that nests arrays deeper than Python recurses.
@example(case=Case(BASE, toml=b'backbone = "caf\xe9"\n', given={"config"}))
@example(case=Case(BASE, toml=b"lr = " + b"[" * 5000 + b"]" * 5000 + b"\n", given={"config"}))
# An integer of more digits than Python converts: tomllib raises a plain ValueError.
@example(case=Case(BASE, toml=b"batch_size = " + b"9" * 5000 + b"\n", given={"config"}))
def test_any_command_plans_or_refuses_in_one_line(sandbox, case):
    assert_kept(sandbox, case)


@settings(BUDGET, max_examples=60)
@given(case=fz.valid_case())
def test_a_command_of_valid_values_plans_a_run(sandbox, case):
    assert_kept(sandbox, case)


def bad(field: str, value, *, toml: bool = False) -> Case:
    """BASE with one field given a bad value, on the command line or in a TOML file."""
    base = fz._base_flags({field})  # a flag would override the file
    if toml:
        text = f"{field} = {fz.toml_value(value)}\n".encode()
        return Case(base, toml=text, given={field}, bad_field=field)
    return Case([*base, f"--{field}={fz._text(value)}"], given={field}, bad_field=field)


@settings(BUDGET, max_examples=160)
@given(case=fz.one_bad_field_case())
# The LR schedule's errors named its own attributes (gamma=0.0), not the fields a user sets.
@example(case=bad("lr_step_gamma", 0.0))
@example(case=bad("lr_step_every", 0, toml=True))
@example(case=bad("lr_plateau_patience", -1))
@example(case=bad("lr_plateau_factor", 1.0))
# A NaN warm-up passed every comparison and reached the schedule.
@example(case=bad("warmup_epochs", math.nan))
@example(case=bad("warmup_epochs", math.nan, toml=True))
# A seed NumPy refuses passed the checks, and the run died in keras.utils.set_random_seed.
@example(case=bad("seed", -1))
@example(case=bad("seed", 2**32))
# A NUL in a TOML string passed as a path, and the OS refused to look it up (ValueError).
@example(case=bad("weights", "a\0b", toml=True))
@example(case=bad("data_dir", "a\0b", toml=True))
# A TOML integer past any float for a float field: OverflowError in the coercion.
@example(case=bad("lr", 10**400, toml=True))
@example(case=bad("dropout", -(10**400), toml=True))
# A batch of more pixels than a float counts: OverflowError in the memory check.
@example(case=bad("batch_size", 10**400))
@example(case=bad("image_size", 10**400, toml=True))
# alpha=inf passed as a positive width, then the memory check failed on int(inf).
@example(case=bad("alpha", math.inf))
# A stage's EPOCHS of a digit int() does not read ('²'.isdigit()): ValueError in the parser.
@example(case=bad("stages", "fe:none:1,ft:all:²"))
def test_one_bad_value_is_refused_naming_its_field(sandbox, case):
    assert_kept(sandbox, case)


@settings(BUDGET, max_examples=100)
@given(toml=fz.toml_case())
def test_a_config_file_loads_and_validates_or_refuses(sandbox, toml):
    """`config.merged` and `config.validate` directly: a config, or a `TLKerasError`."""
    problem = fz.check_toml(sandbox, toml)
    assert problem is None, f"{toml[0][:300]!r}\n{problem}"
