"""The model card `export` writes beside the artifacts: `model_card.json` and `model_card.md`.

Everything in it is read from what the run recorded, or measured here when it was not:

* **model**: backbone, width, input size, the phase and the SHA-256 of its `.keras` file, and
  how it answers (the temperature and test-time augmentation baked into every artifact);
* **data**: the classes, images per split and class (the phase's `summary.json`), the doctor's
  findings (`<workdir>/doctor/report.json`, when training ran it), and the manifest hash (every
  image's split, class and content hash) at training and now: a difference means the data
  changed since the model was trained;
* **recipe**: the recipe card, `<workdir>/recipe.json` (`recipe.auto.CARD_FILE`), when the run
  wrote one, else the resolved `config.json`, with the schedule of phases from `run.json`;
* **metrics** on the test split when the data has one, else on validation (said plainly: it
  guided training): accuracy, balanced accuracy and macro F1 with 95% bootstrap intervals, the
  loss, per-class precision, recall and F1. An evaluation already in `<workdir>/evaluation/`
  is reused only when it was made from this model file with these inference settings;
  otherwise `evaluate_workdir` runs;
* **calibration**: the temperature and where it was fitted, the ECE before and after it on
  validation (`calibration/calibration.json`) and on the evaluated split;
* **exports**: per artifact its size, parity with the Keras model (largest and mean difference,
  top-1 agreement) and, for a quantised file, its accuracy cost (`export.json`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tl_keras import io
from tl_keras.recipe import auto

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"


def write_model_card(trained, manifest: dict[str, Any], out: Path, *, data_dir: str | None = None):
    """Builds the card of a workdir's exported model and writes both files (atomically).

    Args:
      trained: the `TrainedModel` exported.
      manifest: export.json as just written.
      out: the export folder.
      data_dir: the data's folder, if it moved since training.

    Returns:
      The card (what model_card.json holds).
    """
    card = model_card(trained, manifest, data_dir=data_dir, out=out)
    io.atomic_write_json(str(out / CARD_JSON), card)
    io.atomic_write_text(str(out / CARD_MARKDOWN), to_markdown(card))
    return card


def model_card(
    trained, manifest: dict[str, Any], *, data_dir: str | None = None, out: Path | None = None
) -> dict:
    """The card as a JSON-serialisable dict (see the module docstring).

    An evaluation it has to run goes to `<out>/evaluation/<split>/` (never into the workdir,
    which may be read-only).
    """
    from tl_keras.inference.trained import read_run

    wd = Path(trained.workdir)
    run = read_run(trained.workdir)
    bundle = _run_data(trained.workdir, data_dir)
    return {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "model": {
            "workdir": trained.workdir,
            "backbone": trained.backbone,
            "alpha": run.get("alpha"),
            "image_size": trained.image_size,
            "phase": trained.phase,
            "model_sha256": trained.fingerprint(),
            "inference": trained.inference.to_dict(),
            "class_names": trained.class_names,
        },
        "data": _data(wd, run, trained.phase, bundle),
        "recipe": _recipe(wd, run),
        "metrics": _metrics(trained, bundle, out or Path(trained.workdir) / "export"),
        "calibration": _calibration(wd, run),
        "exports": {
            name: {
                k: entry.get(k)
                for k in ("format", "quantization", "bytes", "phase", "parity", "accuracy")
            }
            for name, entry in manifest.get("artifacts", {}).items()
        },
    }


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _run_data(workdir: str, data_dir: str | None):
    from tl_keras.inference.trained import load_run_data

    return load_run_data(workdir, data_dir=data_dir)


def _data(wd: Path, run: dict, phase: str, bundle) -> dict:
    from tl_keras.doctor import workflow

    summary = _read(wd / phase / "summary.json") or {}
    report = summary.get("data") or {}
    doctor = run.get("doctor") or {}
    now = workflow.manifest_hash(workflow.list_images(bundle), bundle.class_names)
    at_training = doctor.get("manifest_sha256")
    findings = None
    if doctor.get("report"):
        full = _read(wd / doctor["report"])
        if full:
            findings = {
                "summary": full["summary"],
                "duplicate_groups": full["duplicates"]["num_groups"],
                "across_splits": full["duplicates"]["num_across_splits"],
                "leaked_from_train": full["duplicates"]["leaked_from_train"],
                "label_suspects": full["label_errors"].get("num_likely"),
                "label_check_reliable": full["label_errors"].get("reliable"),
                "outliers": full["outliers"].get("num_outliers"),
                # checks left for `python -m tl_keras.doctor` (their counts above are null)
                "deferred": full.get("deferred", []),
                "balance_ratio": full["balance"]["ratio"],
                "limits": full["limits"],
            }
    return {
        "source": report.get("source", bundle.source),
        "class_names": list(bundle.class_names),
        "images": report.get("images"),
        "per_class": report.get("per_class"),
        "skipped": report.get("num_skipped"),
        "manifest_sha256": {
            "at_training": at_training,
            "now": now,
            "changed_since_training": None if at_training is None else at_training != now,
        },
        "doctor": findings or {"not_run": doctor.get("skipped", "no doctor report in the workdir")},
    }


def _recipe(wd: Path, run: dict) -> dict:
    """The recipe card (each decided setting, who chose it and why) when the run kept one, and
    the settings the last phase ran with (its own config.json; the run's for older workdirs)."""
    recipe = _read(wd / auto.CARD_FILE)
    done = list(run.get("phases", {}))
    values = _read(wd / done[-1] / "config.json") if done else None
    return {
        "source": auto.CARD_FILE if recipe is not None else "config.json",
        "card": recipe,
        "values": values or _read(wd / "config.json") or {},
        "schedule": run.get("schedule", []),
        "phases_done": run.get("phases", {}),
    }


def _metrics(trained, bundle, out: Path) -> dict:
    from tl_keras.inference import evaluate as ev

    split = "test" if bundle.test is not None else "val" if bundle.val is not None else None
    if split is None:
        return {"not_measured": "the data has no validation or test split"}
    fresh = out / "evaluation" / split
    saved = None
    for folder in (Path(trained.workdir) / "evaluation" / split, fresh):
        candidate = _read(folder / ev.METRICS_FILE) or {}
        model = candidate.get("model", {})
        if (
            model.get("model_sha256") == trained.fingerprint()
            and model.get("inference") == trained.inference.to_dict()
        ):
            saved = candidate  # made from this model file with these inference settings
            break
    if saved is None:
        ev.evaluate_workdir(trained.workdir, split=split, phase=trained.phase, out_dir=str(fresh))
        saved = _read(fresh / ev.METRICS_FILE) or {}
    out = {
        "split": split,
        "note": (
            "held-out test images"
            if split == "test"
            else "the validation split: it guided training (and fitted the temperature), so "
            "these figures are optimistic; evaluate on test images for a fair estimate"
        ),
        **{k: saved.get(k) for k in ("num_images", "accuracy", "balanced_accuracy", "macro_f1")},
        "loss": saved.get("loss"),
        "intervals": saved.get("intervals"),
        "per_class": saved.get("per_class"),
    }
    c = saved.get("calibration") or {}
    out["calibration"] = {k: c.get(k) for k in ("temperature", "ece_before", "ece_after")}
    return out


def _calibration(wd: Path, run: dict) -> dict:
    section = run.get("inference") or {}
    report = _read(wd / "calibration" / "calibration.json") or {}
    c = report.get("calibration") or {}
    return {
        "temperature": section.get("temperature", 1.0),
        "tta": section.get("tta", "none"),
        "fitted": section.get("fitted", "no calibration recorded (a run before it existed)"),
        "phase": section.get("phase"),
        "validation": {k: c.get(k) for k in ("ece_before", "ece_after", "nll_before", "nll_after")}
        if c
        else None,
    }


# --- model_card.md ---------------------------------------------------------------------------------
def to_markdown(card: dict) -> str:
    """The card as a short markdown document."""
    m, d = card["model"], card["data"]
    inference = m["inference"]
    lines = [
        f"# Model card: {m['backbone']}, {len(m['class_names'])} classes",
        "",
        f"Exported {card['created']} from `{m['workdir']}` (phase `{m['phase']}`, model file "
        f"sha256 `{m['model_sha256'][:16]}...`).",
        "",
        "## Model",
        "",
        f"- {m['backbone']}"
        + (f" (width {m['alpha']:g})" if m.get("alpha") else "")
        + f", input {m['image_size']} x {m['image_size']} RGB, raw 0..255 pixels "
        "(preprocessing is inside every artifact)",
        f"- classes: {', '.join(m['class_names'])}",
        f"- answers with temperature {inference['temperature']:.3g} and test-time augmentation "
        f"'{inference['tta']}', baked into every artifact",
    ]
    lines += _data_md(d) + _recipe_md(card["recipe"]) + _metrics_md(card["metrics"])
    lines += _calibration_md(card["calibration"], card["metrics"]) + _exports_md(card["exports"])
    return "\n".join(lines) + "\n"


def _data_md(d: dict) -> list[str]:
    images = ", ".join(f"{k} {v}" for k, v in (d.get("images") or {}).items())
    h = d["manifest_sha256"]
    changed = {True: " **(CHANGED since training)**", False: " (unchanged since training)"}
    lines = [
        "",
        "## Data",
        "",
        f"- source: `{d['source']}`; images: {images or 'not recorded'}"
        + (f"; {d['skipped']} unreadable files skipped" if d.get("skipped") else ""),
        f"- manifest hash now: `{h['now']}`" + changed.get(h["changed_since_training"], ""),
    ]
    doctor = d["doctor"]
    if "summary" in doctor:
        lines.append(f"- {doctor['summary']}")
        for limit in doctor["limits"]:
            lines.append(f"  - not checked: {limit}")
    else:
        lines.append(f"- doctor: not run ({doctor['not_run']})")
    return lines


def _recipe_md(r: dict) -> list[str]:
    lines = ["", "## Recipe", "", f"From `{r['source']}`. Phases:", ""]
    for p in r["schedule"]:
        done = r["phases_done"].get(p.get("name"), {})
        lines.append(
            f"- `{p.get('name')}`: unfreeze {p.get('unfreeze')}, {done.get('epochs_run', '?')} of "
            f"{p.get('epochs')} epochs, lr {p.get('lr', 0):.3g}"
        )
    keys = ("backbone", "alpha", "weights", "image_size", "augment", "label_smoothing",
            "class_weight", "optimizer", "lr_schedule", "seed")  # fmt: skip
    values = r["values"]
    shown = ", ".join(f"{k} = {values[k]!r}" for k in keys if k in values)
    lines += ["", shown] if shown else []
    card = r.get("card") or {}
    if card.get("decisions"):
        lines += ["", f"Recipe card ({card.get('recipe')}): {card.get('regime')}", ""]
        lines += [
            f"- {d['field']} = {d['value']!r} ({d['source']}: {d['reason']})"
            for d in card["decisions"]
        ]
    return lines


def _metrics_md(m: dict) -> list[str]:
    lines = ["", "## Metrics", ""]
    if "not_measured" in m:
        return lines + [f"Not measured: {m['not_measured']}."]
    iv = m.get("intervals") or {}

    def row(name, key):
        low_high = iv.get(key)
        interval = f"[{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "-"
        return f"| {name} | {m[key]:.4f} | {interval} |"

    lines += [
        f"On the {m['split']} split ({m['num_images']} images): {m['note']}.",
        "",
        "| metric | value | 95% interval (bootstrap) |",
        "|---|---|---|",
        row("accuracy", "accuracy"),
        row("balanced accuracy", "balanced_accuracy"),
        row("macro F1", "macro_f1"),
        f"| loss | {m['loss']:.4f} | - |",
        "",
        "| class | precision | recall | F1 | images |",
        "|---|---|---|---|---|",
    ]
    for name, r in (m.get("per_class") or {}).items():
        lines.append(
            f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        )
    return lines


def _calibration_md(c: dict, metrics: dict) -> list[str]:
    lines = [
        "",
        "## Calibration",
        "",
        f"Temperature {c['temperature']:.3g} ({c['fitted']}); test-time augmentation '{c['tta']}'.",
    ]
    if c.get("validation"):
        v = c["validation"]
        lines.append(
            f"- validation: expected calibration error {v['ece_before']:.3f} before, "
            f"{v['ece_after']:.3f} after"
        )
    mc = metrics.get("calibration") or {}
    if mc.get("ece_before") is not None:
        lines.append(
            f"- {metrics['split']}: expected calibration error {mc['ece_before']:.3f} before, "
            f"{mc['ece_after']:.3f} after"
        )
    return lines


def _exports_md(exports: dict) -> list[str]:
    lines = [
        "",
        "## Exports",
        "",
        "| artifact | size | parity: max / mean abs. difference | top-1 agreement | "
        "quantisation cost (accuracy) |",
        "|---|---|---|---|---|",
    ]
    for name, e in exports.items():
        p = e.get("parity") or {}
        parity = f"{p['max_abs_diff']:.2g} / {p['mean_abs_diff']:.2g}" if p else "not checked"
        agree = f"{100 * p['top1_agreement']:.1f}%" if p else "-"
        acc = e.get("accuracy")
        cost = f"{acc['keras_accuracy']:.4f} -> {acc['tflite_accuracy']:.4f}" if acc else "-"
        lines.append(f"| `{name}` | {e['bytes'] / 1e6:.2f} MB | {parity} | {agree} | {cost} |")
    return lines


__all__ = ["CARD_JSON", "CARD_MARKDOWN", "model_card", "to_markdown", "write_model_card"]
