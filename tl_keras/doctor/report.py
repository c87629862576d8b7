"""The doctor's report for people: `report.md` (tables) and `thumbnails.png` (what was found).

`write_report(report, folder, data=...)` writes both next to `report.json` (written by the caller
once the timings are in) and returns their paths. The thumbnails show the duplicate groups
(leakage across splits first, each group's members side by side), the top label suspects with
their given and suggested class, and the outliers, each image as the model sees it.
"""

from __future__ import annotations

import os

import numpy as np

from tl_keras import io

REPORT_FILE = "report.json"
TEXT_FILE = "report.md"
FIGURE_FILE = "thumbnails.png"
LISTED = {"groups": 20, "suspects": 15, "outliers": 10}  # rows of each table in report.md
SHOWN = {"groups": 6, "suspects": 8, "outliers": 4}  # images of each kind in thumbnails.png
COLUMNS = 6


def write_report(
    report: dict, folder: str, *, data=None, figure: bool = True, later: str = ""
) -> dict[str, str]:
    """Writes report.md and, when something was found and the images can be read,
    thumbnails.png.

    Args:
      figure: draw thumbnails.png (False before training: drawing it takes seconds, and
        report.md names every file; an older run's figure is removed, it is not this data's).
      later: the command that runs the deferred checks, for report.md.

    Returns:
      {'report': report.json's path (not written here), 'text': ..., 'figure': ... (if drawn)}.
    """
    os.makedirs(folder, exist_ok=True)
    paths = {"report": os.path.join(folder, REPORT_FILE), "text": os.path.join(folder, TEXT_FILE)}
    tiles = _tiles(report) if figure else []
    if tiles and data is not None and data.images is not None:
        paths["figure"] = os.path.join(folder, FIGURE_FILE)
        _draw(tiles, data, paths["figure"], title=report["summary"])
    elif os.path.exists(os.path.join(folder, FIGURE_FILE)):
        os.unlink(os.path.join(folder, FIGURE_FILE))  # an older run's findings: not this data's
    io.atomic_write_text(paths["text"], to_markdown(report, figure="figure" in paths, later=later))
    return paths


# --- report.md -------------------------------------------------------------------------------------
def to_markdown(report: dict, *, figure: bool = False, later: str = "") -> str:
    """The report as a short markdown document."""
    data, feats = report.get("data", {}), report.get("features", {})
    counts = ", ".join(f"{split} {n}" for split, n in data.get("images", {}).items())
    lines = [
        f"# Data doctor: {data.get('source', '')}",
        "",
        f"**{report['summary']}**",
        "",
        f"{report['num_images']} images ({counts}), {report['num_classes']} classes. "
        + _features_text(feats),
        "",
        f"Manifest hash (every image's split, class and SHA-256): `{data.get('manifest_sha256')}`",
    ]
    if report["limits"]:
        lines += ["", "## What could not be checked", ""] + [f"- {x}" for x in report["limits"]]
    if report.get("deferred"):
        lines += ["", "## Deferred", "", _deferred_text(report, later)]
    lines += _duplicates_md(report["duplicates"])
    lines += _labels_md(report["label_errors"])
    lines += _balance_md(report["balance"], report["class_names"])
    lines += _outliers_md(report["outliers"])
    if figure:
        lines += ["", f"![what the doctor found]({FIGURE_FILE})"]
    return "\n".join(lines) + "\n"


def _deferred_text(report: dict, later: str) -> str:
    names = " and ".join(c.replace("_", " ") for c in report["deferred"])
    how = f"`{later}`" if later else "`python -m tl_keras.doctor` on this workdir"
    return (
        f"Checked before training: {', '.join(c.replace('_', ' ') for c in report['checks'])}. "
        f"Not yet: {names} (they do not change what training does, and on a large base the "
        f"probe behind label errors takes longer than the rest together). {how} runs them on "
        "the cached features and rewrites this report with thumbnails.png."
    )


def _features_text(feats: dict) -> str:
    if not feats:
        return ""
    where = (
        f"computed in {feats['seconds']:.1f} s"
        if feats.get("computed")
        else f"reused from {feats['reused']}"
        if feats.get("reused")
        else "not computed"
    )
    return (
        f"Features: the frozen {feats.get('backbone')} base at {feats.get('image_size')} px "
        f"({where})."
    )


def _duplicates_md(dup: dict) -> list[str]:
    lines = [
        "",
        f"## Duplicates: {dup['num_groups']} groups, {dup['num_across_splits']} across splits",
        "",
    ]
    if not dup["groups"]:
        return lines + ["None found."]
    if dup["num_across_splits"]:
        lines += [
            "Leakage first: a copy of a training image in validation or test inflates every "
            "figure measured there. Keep one image of each group, or put the group in one split.",
            "",
        ]
    lines += ["| # | splits | evidence | weakest cosine | files |", "|---|---|---|---|---|"]
    for k, g in enumerate(dup["groups"][: LISTED["groups"]], 1):
        files = "<br>".join(f"`{m['path']}` ({m['split']}, {m['label']})" for m in g["members"])
        lines.append(
            f"| {k} | {'/'.join(g['splits'])} | {', '.join(g['evidence'])} | "
            f"{g['min_cosine']:.3f} | {files} |"
        )
    return lines + _more(len(dup["groups"]), LISTED["groups"], "groups")


def _labels_md(errors: dict) -> list[str]:
    lines = ["", "## Label suspects", ""]
    if errors.get("deferred"):
        return lines + ["Deferred (see above)."]
    if not errors["checked"]:
        return lines + ["Not checked (see above)."]
    lines += [
        f"{errors['num_likely']} likely label errors of {errors['num_checked']} images checked; "
        f"{errors['note']}.",
        "",
        "| rank | file | split | label | suggested | p(label) | neighbours agreeing | likely |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, s in enumerate(errors["suspects"][: LISTED["suspects"]], 1):
        lines.append(
            f"| {k} | `{s['path']}` | {s['split']} | {s['label']} | {s['suggested']} | "
            f"{s['p_given']:.2f} | {s['neighbours_agreeing']:.0%} | {'yes' if s['likely'] else ''} |"
        )
    return lines


def _balance_md(balance: dict, class_names: list[str]) -> list[str]:
    counts = balance["counts"]
    splits = list(next(iter(counts.values())).keys()) if counts else []
    lines = [
        "",
        "## Class balance",
        "",
        "| class | " + " | ".join(splits) + " | total |",
        "|---" * (len(splits) + 2) + "|",
    ]
    for name in class_names:
        row = " | ".join(str(counts[name][s]) for s in splits)
        lines.append(f"| {name} | {row} | {balance['totals'][name]} |")
    ratio = balance["ratio"]
    lines += ["", f"Largest / smallest class: {ratio:g}." if ratio is not None else ""]
    return lines + [f"- **{w}**" for w in balance["warnings"]]


def _outliers_md(outliers: dict) -> list[str]:
    lines = ["", "## Outliers: images far from every class", ""]
    if outliers.get("deferred"):
        return lines + ["Deferred (see above)."]
    if not outliers["checked"]:
        return lines + ["Not checked (see above)."]
    if not outliers["items"]:
        return lines + ["None found."]
    lines += [
        "Isolation near 0: part of a group of similar odd images (another domain); high: a "
        "lone odd image.",
        "",
        "| file | split | label | score | isolation |",
        "|---|---|---|---|---|",
    ]
    for o in outliers["items"][: LISTED["outliers"]]:
        iso = "-" if o["isolation"] is None else f"{o['isolation']:.1f}"
        lines.append(f"| `{o['path']}` | {o['split']} | {o['label']} | {o['score']:.1f} | {iso} |")
    return lines + _more(outliers["num_outliers"], LISTED["outliers"], "outliers")


def _more(total: int, shown: int, what: str) -> list[str]:
    return ["", f"... {total - shown} more {what} in report.json."] if total > shown else []


# --- thumbnails.png --------------------------------------------------------------------------------
def _tiles(report: dict) -> list[tuple[str, str, str, str]]:
    """(split, path, title, colour) of each image to draw, in order."""
    tiles = []
    for k, g in enumerate(report["duplicates"]["groups"][: SHOWN["groups"]], 1):
        for m in g["members"][:2]:
            colour = "firebrick" if g["across_splits"] else "black"
            tiles.append((m["split"], m["path"], f"duplicate {k}: {m['split']}", colour))
    errors = report["label_errors"]
    for s in errors["suspects"][: SHOWN["suspects"]] if errors["checked"] else []:
        title = f"label {s['label']}\nsuggested {s['suggested']}"
        tiles.append((s["split"], s["path"], title, "darkorange"))
    outliers = report["outliers"]
    for o in outliers["items"][: SHOWN["outliers"]] if outliers["checked"] else []:
        tiles.append((o["split"], o["path"], f"outlier ({o['label']})", "purple"))
    return tiles


def _pixels(data, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    """The images (as the model sees them) of (split, path) pairs, read in one pass per split."""
    from tl_keras.data.pipeline import eval_dataset

    out = {}
    for split in {s for s, _ in wanted}:
        images = data.images.get(split)
        if images is None:
            continue
        names = [images.items[j] for j in images.ids] if images.kind == "files" else images.names
        index = {str(n): i for i, n in enumerate(names)}
        paths = [p for s, p in wanted if s == split and p in index]
        subset = images.subset(np.array([index[p] for p in paths], np.int64))
        pixels = [x for x, _ in eval_dataset(subset, data.num_classes, data.pipeline).unbatch()]
        out.update(
            {(split, p): np.asarray(x, np.uint8) for p, x in zip(paths, pixels, strict=True)}
        )
    return out


def _draw(tiles: list, data, path: str, *, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pixels = _pixels(data, [(s, p) for s, p, _, _ in tiles])
    rows = -(-len(tiles) // COLUMNS)
    fig = Figure(figsize=(2.2 * COLUMNS, 2.5 * rows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (split, name, text, colour) in zip(axes, tiles, strict=False):
        if (split, name) in pixels:
            ax.imshow(pixels[(split, name)])
        ax.set_title(f"{text}\n{os.path.basename(name)[:28]}", fontsize=7, color=colour)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


__all__ = ["FIGURE_FILE", "REPORT_FILE", "TEXT_FILE", "to_markdown", "write_report"]
