"""What "the same run" means for the crash soak (`soak_crash.py`): two workdirs compared bitwise.

Compared, file by file, the run's whole folder except what outlives a run:

- the same files (relative paths): a checkpoint, a `.replacement/` folder or a killed writer's
  temporary file left over is a difference;
- `*.keras` models (each phase's, with its optimizer): every array of `model.weights.h5` (the
  weights, BatchNorm statistics, the optimizer's variables and iteration count) bitwise, with
  its dtype and shape, and the model's `config.json`;
- `*.json` (run.json, the histories, summaries, config, the recipe card, RNG states, the
  calibration and doctor reports): every value, floats exactly as written;
- `*.npz` (the doctor's features and thumbnails): every array bitwise;
- everything else (curves and reliability diagrams as PNG bytes, history.csv, the doctor's
  report.md): byte for byte.

Left out, and why:

- `data/` (the generated data set), `cache/` (the feature cache), `logs/`, `lr_find/` and the
  lock: they outlive a run (`tl_keras.workdir.SHARED`) and are not its result;
- a `.keras` file's `metadata.json` (Keras writes the save's date and time into it);
- in a model's `config.json`, what Keras's serialisation takes from the saving process rather
  than from the model: `shared_object_id` (the Python `id()` of an object several layers
  share, such as a dtype policy; whether one is shared at all depends on whether the model was
  built in that process or loaded from a file: a resumed phase's is loaded) and the number Keras
  appends to an auto-generated name to keep it unique in the process (`adam_1` when fe's
  optimizer was made in the same process, `adam` when ft resumed alone);
- the durations the run measured with its clock: `wall_time_s` (a phase's entry in run.json,
  its summary.json), `decode_check_s` (the data report), the doctor report's `seconds`;
- how the doctor got its features: computed (in how many seconds) or reused from its own cache
  (`doctor/features.npz`, which an attempt killed after the doctor leaves for the next one):
  report.json's `features.computed`, `.seconds`, `.reused`, and the words that say it in
  report.md; the features themselves and every finding are compared;
- the `key` of the doctor's feature cache (`doctor/features.npz`): a hash of every image's
  path, size and modification time, so of the workdir's path and of when the data was written;
- the workdir's own path where a file names it (two runs cannot share a folder), and the path of
  the workdir a replaced run was copied from: both read `<workdir>` before comparing.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
import zipfile

OUTLIVES_A_RUN = ("data", "cache", "logs", "lr_find", ".tl_keras.lock")
TIMINGS = ("wall_time_s", "decode_check_s")  # durations measured by the run's clock
TMP_MARK = ".tmp-"  # tl_keras.io.TMP_MARK: in every temporary file's name
# The doctor's report: each step's seconds, and how it got its features (computed, in how many
# seconds, or reused from its cache), in report.json and in report.md's words.
DOCTOR_LEFT_OUT = {"seconds": None, "features": ("computed", "seconds", "reused")}
_FEATURES_TEXT = re.compile(rb"\((?:computed in \d+(?:\.\d+)? s|reused from [^)]*)\)")
NPZ_KEYS_LEFT_OUT = ("key",)  # doctor/features.npz: a hash of paths and modification times
_UNIQUE_SUFFIX = re.compile(r"_\d+$")  # keras.backend's unique names: adam, adam_1, ...


def run_files(workdir: str | pathlib.Path, *, ignore_leftovers: bool = False) -> list[str]:
    """The run's files in `workdir` (relative paths, sorted), what outlives a run left out, and
    with `ignore_leftovers` a killed writer's temporary files (the next writer removes them)."""
    root = pathlib.Path(workdir)
    out = []
    for p in root.rglob("*"):
        parts = p.relative_to(root).parts
        if not p.is_file() or parts[0] in OUTLIVES_A_RUN:
            continue
        if ignore_leftovers and any(TMP_MARK in part for part in parts):
            continue
        out.append(str(p.relative_to(root)))
    return sorted(out)


def differences(
    workdir, reference, *, limit: int = 20, ignore_leftovers: bool = False
) -> list[str]:
    """How the run in `workdir` differs from the one in `reference` ([] when they are the same).

    Args:
      workdir: the run to check.
      reference: the uninterrupted run of the same config.
      limit: stop after this many differences.
      ignore_leftovers: leave out a killed writer's temporary files (`run_files`).
    """
    workdir, reference = pathlib.Path(workdir), pathlib.Path(reference)
    got, want = run_files(workdir, ignore_leftovers=ignore_leftovers), run_files(reference)
    found = [f"only in the run: {p}" for p in sorted(set(got) - set(want))]
    found += [f"missing from the run: {p}" for p in sorted(set(want) - set(got))]
    for rel in sorted(set(got) & set(want)):
        if len(found) >= limit:
            break
        why = _file_difference(workdir / rel, reference / rel, str(workdir), str(reference))
        if why:
            found.append(f"{rel}: {why}")
    return found[:limit]


def _file_difference(a: pathlib.Path, b: pathlib.Path, root_a: str, root_b: str) -> str | None:
    if a.suffix == ".keras":
        return _model_difference(a, b)
    if a.suffix == ".npz":
        return _npz_difference(a, b)
    data_a, data_b = (
        _unrooted(a.read_bytes(), root_a, root_b),
        _unrooted(b.read_bytes(), root_a, root_b),
    )
    if a.suffix == ".md":
        data_a, data_b = (_FEATURES_TEXT.sub(b"(<features>)", d) for d in (data_a, data_b))
    if a.suffix == ".json":
        try:
            ja, jb = (_without_timings(json.loads(d)) for d in (data_a, data_b))
            if a.name == "report.json" and a.parent.name == "doctor":
                for report in (ja, jb):
                    for key, inner in DOCTOR_LEFT_OUT.items():
                        if inner is None:
                            report.pop(key, None)
                        for k in inner or ():
                            report.get(key, {}).pop(k, None)
        except ValueError as e:
            return f"not JSON ({e})"
        return None if ja == jb else _first_json_difference(ja, jb)
    return None if data_a == data_b else f"the bytes differ ({len(data_a)} and {len(data_b)})"


def _unrooted(data: bytes, *roots: str) -> bytes:
    """`data` with either workdir's path as `<workdir>` (a workdir copied from the other names
    it in the files it kept)."""
    for root in sorted(roots, key=len, reverse=True):
        data = data.replace(root.encode(), b"<workdir>")
    return data


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _first_json_difference(a, b, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"key {where}/{key} in one only"
            if a[key] != b[key]:
                return _first_json_difference(a[key], b[key], f"{where}/{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_json_difference(x, y, f"{where}[{i}]")
    return f"{where or '/'}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"


def _model_difference(a: pathlib.Path, b: pathlib.Path) -> str | None:
    try:
        za, zb = zipfile.ZipFile(a), zipfile.ZipFile(b)
        if sorted(za.namelist()) != sorted(zb.namelist()):
            return f"members {sorted(za.namelist())} != {sorted(zb.namelist())}"
        if _config(za) != _config(zb):
            return "the model's config.json differs"
        arrays_a, arrays_b = _arrays(za), _arrays(zb)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        return f"unreadable model ({e})"
    if sorted(arrays_a) != sorted(arrays_b):
        return "not the same variables"
    for name in sorted(arrays_a):
        if not _same_array(arrays_a[name], arrays_b[name]):
            return f"variable {name} differs"
    return None


def _npz_difference(a: pathlib.Path, b: pathlib.Path) -> str | None:
    import numpy as np

    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        names = sorted(set(x.files) - set(NPZ_KEYS_LEFT_OUT))
        if names != sorted(set(y.files) - set(NPZ_KEYS_LEFT_OUT)):
            return f"arrays {sorted(x.files)} != {sorted(y.files)}"
        for name in names:
            if not _same_array(x[name], y[name]):
                return f"array {name} differs"
    return None


def _same_array(x, y) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _config(archive: zipfile.ZipFile) -> dict:
    """The model's config.json without what the saving process adds (the module docstring)."""

    def strip(value, key=""):
        if isinstance(value, dict):
            return {k: strip(v, k) for k, v in value.items() if k != "shared_object_id"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    config = strip(json.loads(archive.read("config.json")))
    optimizer = config.get("compile_config", {}).get("optimizer", {}).get("config", {})
    if isinstance(optimizer.get("name"), str):
        optimizer["name"] = _UNIQUE_SUFFIX.sub("", optimizer["name"])
    return config


def _arrays(archive: zipfile.ZipFile) -> dict:
    """Every dataset of the model's weights file, by its path in the file."""
    import h5py

    out = {}
    with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        f.visititems(
            lambda name, obj: out.update({name: obj[()]}) if hasattr(obj, "dtype") else None
        )
    return out
