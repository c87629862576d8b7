"""Config fuzzing at a large budget: tests/test_fuzz_config.py's properties, many more examples.

    python benchmarks/fuzz_config.py                   # 5000 examples a property, a random seed
    python benchmarks/fuzz_config.py --seed=1234       # replay a run: the same draws
    python benchmarks/fuzz_config.py --examples=200    # a smoke run

Each property draws its cases from tests/fuzz_config_cases.py and runs them in this process as
`python -m tl_keras.train` would, up to the plan (no data, no TensorFlow):

- `any`: any command (flags with any text, --phase/--resume/--overwrite, the --unfreeze
  shortcuts, unknown flags, stray arguments, a TOML file valid or broken, four workdir states):
  a planned run, or one `error:` line naming what was given (exit 2), or absl's one line for a
  flag it cannot parse (exit 1); never a traceback; the workdir untouched;
- `valid`: only valid values: it must plan a run;
- `one_bad`: valid values and one bad one: refused, naming that field;
- `toml`: a TOML file through `config.merged` and `config.validate`: a config or a TLKerasError.

A case that breaks a property is recorded (not shrunk) and the run goes on. Writes
benchmarks/results/fuzz_config.json: the seed, the examples run, the outcomes, the refusals by
the field they name, and every finding with a case that shows it; exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import subprocess
import sys
import time

import _common

sys.path.insert(0, str(_common.REPO / "tests"))
import fuzz_config_cases as fz  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402


def _run(name: str, strategy, examples: int, draw_seed: int, record) -> float:
    """Runs one property for `examples` cases; returns its wall time (s)."""

    @seed(draw_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def prop(case):
        record(name, case)

    started = time.monotonic()
    prop()
    return time.monotonic() - started


def _key(problem: str) -> str:
    """A finding's kind: the exception and its message, numbers and quoted values left out."""
    last = problem.strip().splitlines()[-1]
    return re.sub(r"\d+|'[^']*'", "#", last)[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="cases per property")
    parser.add_argument("--seed", type=int, default=None, help="the draws' seed (random)")
    args = parser.parse_args()
    draw_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {draw_seed}: python benchmarks/fuzz_config.py --seed={draw_seed}", flush=True)

    sandbox = fz.Sandbox()
    outcomes = collections.defaultdict(collections.Counter)
    refusals = collections.Counter()
    findings: dict[str, dict] = {}

    def record(prop: str, case) -> None:
        if prop == "toml":
            problem, kind = fz.check_toml(sandbox, case), "toml"
        else:
            outcome, before, after = fz.run_case(sandbox, case)
            problem = fz.check_outcome(case, outcome, before, after)
            kind = (
                "planned"
                if outcome.planned
                else "crash"
                if outcome.crash
                else f"refused (exit {outcome.status})"
            )
            if not outcome.planned and not outcome.crash:
                refusals[fz.blamed(case, outcome)] += 1
        outcomes[prop][kind] += 1
        if problem:
            found = findings.setdefault(
                _key(problem), {"count": 0, "property": prop, "case": "", "problem": ""}
            )
            found["count"] += 1
            if not found["case"]:
                found["case"] = case.describe()[:2000] if prop != "toml" else repr(case)[:2000]
                found["problem"] = problem[-3000:]

    strategies = {
        "any": fz.any_case(),
        "valid": fz.valid_case(),
        "one_bad": fz.one_bad_field_case(),
        "toml": fz.toml_case(),
    }
    wall = {}
    try:
        for name, strategy in strategies.items():
            wall[name] = round(_run(name, strategy, args.examples, draw_seed, record), 1)
            print(f"{name}: {sum(outcomes[name].values())} cases in {wall[name]} s, "
                  f"{dict(outcomes[name])}", flush=True)  # fmt: skip
    finally:
        sandbox.close()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=_common.REPO, capture_output=True, text=True
    ).stdout.strip()
    payload = {
        "command": f"python benchmarks/fuzz_config.py --examples={args.examples} "
        f"--seed={draw_seed}",
        "seed": draw_seed,
        "examples": {name: sum(c.values()) for name, c in outcomes.items()},
        "outcomes": {name: dict(c) for name, c in outcomes.items()},
        "refusals_by_field": dict(refusals.most_common()),
        "findings": sorted(findings.values(), key=lambda f: -f["count"]),
        "wall_s": wall,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": _common._LOAD_AT_START,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit,
        },
    }
    path = _common.write("fuzz_config", payload)
    print(f"{sum(payload['examples'].values())} cases, {len(findings)} kinds of finding; {path}")
    for found in payload["findings"]:
        print(f"  {found['count']} x {found['property']}: {found['problem'].splitlines()[-1]}")
        print(f"    e.g. {found['case'][:300]}")
    print(json.dumps(payload["refusals_by_field"])[:2000])
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
