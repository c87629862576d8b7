"""The data doctor's checks on synthetic feature arrays: each defect planted, found, and named."""

import json

import numpy as np
import pytest

from tl_keras.doctor import analysis, linear_probe, neighbours
from tl_keras.doctor.analysis import diagnose, summary_line
from tl_keras.doctor.thresholds import Thresholds
from tl_keras.errors import DataError

CLASSES = ["ant", "bee", "cat", "dog"]


def clusters(per_class=40, num_classes=4, dim=32, seed=0, spread=1.0):
    """Well-separated Gaussian classes: centres of norm ~17, noise of norm ~5.7 * spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + rng.normal(0, spread, (len(labels), dim))
    splits = np.where(rng.random(len(labels)) < 0.25, "val", "train").tolist()
    paths = [f"{CLASSES[y] if y < 4 else y}/{i:03d}.jpg" for i, y in enumerate(labels)]
    return x, labels, splits, paths


def run(x, labels, splits=None, paths=None, **kwargs):
    kwargs.setdefault("class_names", CLASSES[: int(np.max(labels)) + 1])
    return diagnose(x, labels, splits=splits, paths=paths, **kwargs)


def group_paths(report):
    return [[m["path"] for m in g["members"]] for g in report["duplicates"]["groups"]]


def test_clean_data_raises_nothing():
    x, y, splits, paths = clusters()
    report = run(x, y, splits, paths)
    assert report["duplicates"]["groups"] == []
    assert report["label_errors"]["num_likely"] == 0
    assert report["label_errors"]["probe_accuracy"] == 1.0
    assert report["balance"]["ok"] and report["balance"]["ratio"] == 1.0
    assert report["outliers"]["num_outliers"] == 0
    assert report["limits"] == []
    assert report["summary"] == (
        "doctor: 0 duplicate groups, 0 likely label errors, balance ok, 0 outliers"
    )


def test_exact_and_near_copies_grouped_and_leakage_listed_first():
    x, y, splits, paths = clusters()
    splits = ["train"] * len(y)
    hashes = [f"h{i}" for i in range(len(y))]
    rng = np.random.default_rng(1)
    # 3: an exact copy (same hash) in val. 7: a re-encoded copy (nearly the same features) in
    # test. 11: a copy in train too, so no leakage. 20: identical features, different hashes.
    extra = [(3, "val", "h3", x[3]), (7, "test", "hx", x[7] + rng.normal(0, 0.05, x.shape[1]))]
    extra += [(11, "train", "h11", x[11]), (20, "val", "hy", x[20])]
    for i, split, h, feats in extra:
        x = np.vstack([x, feats])
        y = np.append(y, y[i])
        splits.append(split)
        hashes.append(h)
        paths.append(f"copies/{split}_{i:03d}.jpg")
    report = run(x, y, splits, paths, hashes=hashes)
    dup = report["duplicates"]
    assert dup["num_groups"] == 4 and dup["num_across_splits"] == 3
    assert dup["num_exact_groups"] == 2  # 3 and 11: the same hash
    assert dup["leaked_from_train"] == {"val": 2, "test": 1}
    groups = dup["groups"]
    assert [g["across_splits"] for g in groups] == [True, True, True, False]
    kinds = {tuple(p): g["kind"] for p, g in zip(group_paths(report), groups, strict=True)}
    assert kinds[(paths[3], "copies/val_003.jpg")] == "exact"
    assert kinds[(paths[20], "copies/val_020.jpg")] == "near"  # same features, other bytes
    for g in groups:
        assert g["size"] == 2 and not g["label_conflict"]
        assert g["members"][0]["split"] == "train"  # train first: what leaked into val / test
    assert sorted(map(sorted, group_paths(report))) == sorted(
        sorted([paths[i], f"copies/{s}_{i:03d}.jpg"]) for i, s, _, _ in extra
    )
    assert report["summary"].startswith(
        "doctor: 4 duplicate groups (1 across train/test, 2 across train/val),"
    )


def test_a_near_duplicate_is_judged_against_its_neighbourhood():
    """The same cosine, 0.95, is a copy in a sparse place and a neighbour in a crowded one."""
    rng = np.random.default_rng(2)
    dim = 64
    a = np.eye(dim)[0]
    b = 0.95 * a + np.sqrt(1 - 0.95**2) * np.eye(dim)[1]  # cosine 0.95 with a
    sparse = np.vstack([rng.normal(size=(60, dim)), a, b])  # the others point anywhere
    crowded = np.vstack([a + rng.normal(0, 0.01, (60, dim)), a, b])  # the others hug a
    labels = np.zeros(62, dtype=int)
    assert ["#60", "#61"] in group_paths(diagnose(sparse, labels))
    only_local = Thresholds(identical_cosine=1.0)  # judge every pair by its neighbourhood
    assert ["#60", "#61"] not in group_paths(diagnose(crowded, labels, thresholds=only_local))


def test_a_copy_is_found_in_a_sparse_place_by_the_local_score():
    x, y, _, _ = clusters(spread=3.0)  # broad classes: neighbours at cosine ~0.6
    z = analysis.l2_normalize(x)
    copy = z[5] + 0.3 * analysis.l2_normalize(np.random.default_rng(3).normal(size=(1, 32)))[0]
    cos = float(analysis.l2_normalize(copy[None])[0] @ z[5])
    assert 0.9 < cos < 0.99  # not an identical-features copy: the local score must find it
    report = run(np.vstack([z, copy]), np.append(y, y[5]))
    assert [sorted(g) for g in group_paths(report)] == [["#160", "#5"]]


def test_many_copies_of_one_image_stay_one_group():
    x, y, _, _ = clusters()
    hashes = [f"h{i}" for i in range(len(y))]
    # 9 byte-identical copies (more than neighbourhood_k) and 9 near-identical ones.
    rng = np.random.default_rng(4)
    x = np.vstack([x, np.repeat(x[:1], 9, 0), x[50] + rng.normal(0, 0.01, (9, x.shape[1]))])
    y = np.concatenate([y, np.repeat(y[:1], 9), np.repeat(y[50:51], 9)])
    hashes += ["h0"] * 9 + [f"n{i}" for i in range(9)]
    report = run(x, y, hashes=hashes)
    assert sorted(g["size"] for g in report["duplicates"]["groups"]) == [10, 10]
    assert {g["kind"] for g in report["duplicates"]["groups"]} == {"exact", "near"}


def test_label_flips_ranked_first_with_the_right_suggestion():
    x, y, splits, paths = clusters()
    flipped = [2, 45, 90, 131, 150]
    given = y.copy()
    given[flipped] = (y[flipped] + 1) % 4
    report = run(x, given, splits, paths)
    errors = report["label_errors"]
    assert errors["num_likely"] == 5
    top = errors["suspects"][:5]
    assert sorted(s["path"] for s in top) == sorted(paths[i] for i in flipped)
    for s in top:
        i = paths.index(s["path"])
        assert s["likely"] and s["label"] == CLASSES[given[i]]
        assert s["suggested"] == CLASSES[y[i]]
    assert not any(s["likely"] for s in errors["suspects"][5:])
    assert "5 likely label errors" in report["summary"]


def test_thumbnails_find_an_edited_copy_the_features_miss():
    """Image 7 and 60 share a thumbnail (a colour edit): joined by thumbnails, as long as their
    features are at least thumbnail_min_cosine alike; flat thumbnails never pair."""
    x, y, splits, paths = clusters()
    x[60] = x[7] + np.random.default_rng(5).normal(0, 2.0, x.shape[1])  # beyond a near-copy
    rng = np.random.default_rng(6)
    thumbs = rng.normal(0, 1, (len(y), 256))
    thumbs[60] = thumbs[7] * 0.6 + 10 + rng.normal(0, 0.01, 256)  # a brightness / contrast edit
    thumbs[[100, 101]] = 5.0  # two flat grey images
    z = analysis.l2_normalize(x)
    assert 0.7 <= z[7] @ z[60] < 0.98
    plain = run(x, y, splits, paths)
    assert plain["duplicates"]["groups"] == []
    report = run(x, y, splits, paths, thumbnails=thumbs)
    (group,) = report["duplicates"]["groups"]
    assert sorted(m["path"] for m in group["members"]) == sorted([paths[7], paths[60]])
    assert group["evidence"] == ["thumbnails"] and group["kind"] == "near"
    strict = run(
        x, y, splits, paths, thumbnails=thumbs, thresholds=Thresholds(thumbnail_min_cosine=0.99)
    )
    assert strict["duplicates"]["groups"] == []
    with pytest.raises(DataError, match="thumbnails must have one row per image"):
        run(x, y, splits, paths, thumbnails=thumbs[:5])


def test_a_weak_probe_reports_suspects_to_review_not_errors():
    x, y, splits, paths = clusters(spread=9.0)  # classes overlap: a probe gets few right
    report = run(x, y, splits, paths)
    errors = report["label_errors"]
    assert errors["probe_accuracy"] < 0.8 and not errors["reliable"]
    assert "a list to review, not a count of errors" in errors["note"]
    n = errors["num_likely"]
    assert (
        f"{n} label suspect{'s' * (n != 1)} to review (weak check: a probe gets "
        in (report["summary"])
    )
    assert "likely label error" not in report["summary"]


def test_without_features_only_hashes_and_balance_are_checked():
    y = np.array([0, 0, 0, 1, 1, 1])
    report = diagnose(None, y, hashes=list("abcdea"), class_names=["ant", "bee"])
    (group,) = report["duplicates"]["groups"]
    assert group["kind"] == "exact" and group["label_conflict"]
    assert not report["label_errors"]["checked"] and not report["outliers"]["checked"]
    assert report["limits"] == [analysis.NO_FEATURES]
    custom = diagnose(None, y, class_names=["ant", "bee"], no_features=["random base"])
    assert custom["limits"] == ["random base"] and custom["duplicates"]["groups"] == []


def test_copies_of_a_mislabelled_image_do_not_vouch_for_it():
    x, y, _, _ = clusters()
    given = y.copy()
    given[7] = (y[7] + 2) % 4
    # Four exact copies, all with the same wrong label: they would outvote its real neighbours.
    x = np.vstack([x, np.repeat(x[7:8], 4, 0)])
    given = np.append(given, [given[7]] * 4)
    report = run(x, given, hashes=[f"h{i}" for i in range(160)] + ["h7"] * 4)
    assert report["duplicates"]["groups"][0]["size"] == 5
    suspects = {s["path"]: s for s in report["label_errors"]["suspects"]}
    assert suspects["#7"]["likely"] and suspects["#7"]["suggested"] == CLASSES[y[7]]


def test_balance_warns_at_50_to_1_and_not_at_1_to_1():
    x, y, _, _ = clusters(per_class=250, num_classes=2)
    keep = np.concatenate([np.arange(250), np.arange(250, 255)])  # 250 : 5
    report = run(x[keep], y[keep])
    balance = report["balance"]
    assert balance["ratio"] == 50.0 and not balance["ok"]
    assert (balance["largest"], balance["smallest"]) == ("ant", "bee")
    assert balance["totals"] == {"ant": 250, "bee": 5}
    assert "imbalanced: ant has 250 images, 50x the 5 of bee" in balance["warnings"][0]
    assert "balanced accuracy" in balance["warnings"][0]
    assert "imbalance 50:1 (ant 250, bee 5)" in report["summary"]
    even = run(x, y)["balance"]
    assert even["ok"] and even["ratio"] == 1.0 and even["warnings"] == []


def test_balance_at_the_threshold_and_missing_classes():
    y = np.array([0] * 50 + [1] * 10)
    x = clusters(per_class=30, num_classes=2)[0]
    assert run(x, y)["balance"]["ok"]  # exactly 5x: not more than 5x
    y3 = np.array([0] * 30 + [1] * 30)
    report = run(
        x, y3, splits=["train"] * 30 + ["train"] * 25 + ["val"] * 5, class_names=CLASSES[:3]
    )
    warnings = report["balance"]["warnings"]
    assert warnings[0] == "no images of class cat"
    assert "split 'val' has no images of class ant" in warnings
    assert report["balance"]["ratio"] is None
    assert "no images of class cat" in report["summary"]


def test_an_image_far_from_every_class_is_an_outlier():
    x, y, splits, paths = clusters()
    stranger = np.random.default_rng(5).normal(0, 3, (1, x.shape[1]))  # another domain
    report = run(
        np.vstack([x, stranger]), np.append(y, 2), splits + ["train"], paths + ["cat/odd.jpg"]
    )
    outliers = report["outliers"]
    assert outliers["num_outliers"] == 1
    item = outliers["items"][0]
    assert item["path"] == "cat/odd.jpg" and item["score"] >= 3.5
    assert item["centroid_angle"] > 60 and item["isolation"] > 3
    assert report["summary"].endswith("1 outlier")


def test_tiny_classes_say_what_cannot_be_checked():
    x, y, _, paths = clusters(per_class=20, num_classes=3)
    tiny = np.random.default_rng(6).normal(0, 3, (3, x.shape[1]))
    x = np.vstack([x, tiny[:1], tiny[1:2], tiny[1:2] + 0.01])  # dog: 1 image, eel: 2 (a copy)
    y = np.concatenate([y, [3, 4, 4]])
    names = CLASSES + ["eel"]
    report = diagnose(x, y, class_names=names)
    assert len(report["limits"]) == 1
    assert "class dog, eel has fewer than 5 images" in report["limits"][0]
    assert "no label-error or outlier verdict" in report["limits"][0]
    listed = {s["path"] for s in report["label_errors"]["suspects"]}
    listed |= {o["path"] for o in report["outliers"]["items"]}
    assert not listed & {"#60", "#61", "#62"}
    assert report["label_errors"]["num_checked"] == 60
    assert group_paths(report) == [["#61", "#62"]]  # duplicates are still checked
    assert report["summary"].endswith("(1 limit: see report)")
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_too_few_images_for_statistics(n):
    x, y, _, _ = clusters(per_class=3, num_classes=2)
    report = diagnose(x[:n], y[:n], hashes=["same"] * n)
    assert not report["label_errors"]["checked"] and not report["outliers"]["checked"]
    assert "too few for label-error and outlier statistics" in report["limits"][0]
    assert "label errors not checked" in report["summary"]
    assert "outliers not checked" in report["summary"]
    assert report["duplicates"]["num_groups"] == (1 if n > 1 else 0)  # one hash: all copies
    json.dumps(report, allow_nan=False)


def test_report_is_json_deterministic_and_records_its_thresholds():
    x, y, splits, paths = clusters(seed=7)
    y = y.copy()
    y[:3] = 3
    t = Thresholds(outlier_z=3.0, max_listed=5)
    one = diagnose(x, y, splits=splits, paths=paths, thresholds=t, seed=3)
    two = diagnose(x, y, splits=splits, paths=paths, thresholds=t, seed=3)
    assert json.dumps(one, allow_nan=False) == json.dumps(two, allow_nan=False)
    assert (
        one["thresholds"]["outlier_z"] == 3.0 and one["thresholds"]["near_duplicate_score"] == 0.7
    )
    assert one["version"] == analysis.REPORT_VERSION and one["summary"] == summary_line(one)
    assert len(one["label_errors"]["suspects"]) >= 5
    assert one["class_names"] == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(features=np.zeros((0, 4))), "N x D"),
        (dict(features=np.zeros(5)), "N x D"),
        (dict(features=np.array([[0.0, np.nan]] * 5)), "NaN or infinite"),
        (dict(labels=np.array([0, 1, 2, 0])), "5 integers"),
        (dict(labels=np.array([0.0, 1, 0, 1, 0])), "integers"),
        (dict(labels=np.array([0, 1, 7, 1, 0])), r"labels must be in \[0, 2\)"),
        (dict(splits=["train"] * 4), "splits must have one entry per image"),
        (dict(paths=["a"] * 6), "paths must have one entry per image"),
        (dict(hashes=["a"]), "hashes must have one entry"),
    ],
)
def test_bad_input_is_refused_with_the_value(change, match):
    args = dict(features=np.ones((5, 4)), labels=np.array([0, 1, 0, 1, 0]), class_names=["a", "b"])
    args.update(change)
    with pytest.raises(DataError, match=match):
        diagnose(args.pop("features"), args.pop("labels"), **args)


@pytest.mark.parametrize(
    ("field", "value"),
    [("near_duplicate_score", 0.0), ("identical_cosine", 1.5), ("label_k", 0), ("probe_folds", 1),
     ("imbalance_ratio", 0.5)],
)  # fmt: skip
def test_thresholds_refuse_nonsense(field, value):
    with pytest.raises(DataError, match=field):
        Thresholds(**{field: value})


def test_nearest_neighbours_in_blocks_equal_brute_force(monkeypatch):
    z = analysis.l2_normalize(np.random.default_rng(8).normal(size=(57, 6)))
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 57 * 5)  # 5 rows per block
    idx, sims = analysis.nearest_neighbours(z, 7)
    full = z @ z.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :7]
    assert np.array_equal(idx, expected)
    assert np.allclose(sims, np.take_along_axis(full, expected, 1), atol=1e-6)
    assert analysis.nearest_neighbours(z[:1], 7)[0].shape == (1, 0)


def test_probe_matches_scikit_learn_logistic_regression():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y, _, _ = clusters(spread=4.0, seed=9)  # overlapping classes: probabilities in between
    x = (x - x.mean(0)) / x.std(0)
    w, b = linear_probe.fit_softmax_probe(x, y, 4, l2=10.0, max_iterations=5000, tolerance=1e-7)
    ours = linear_probe.softmax(x @ w + b)
    theirs = linear_model.LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(x, y)
    assert np.allclose(ours, theirs.predict_proba(x), atol=2e-3)


def test_out_of_fold_probabilities_never_see_the_image():
    x, y, _, _ = clusters(per_class=10, num_classes=2)
    x = np.vstack([x, x[:1] + 100.0])  # a far point, labelled class 1, alone in that place
    y = np.append(y, 1)
    z = analysis.l2_normalize(x)
    probs = linear_probe.out_of_fold_probabilities(z, y, 2, folds=5, l2=1.0, seed=0)
    assert np.allclose(probs.sum(1), 1.0)
    folds = linear_probe.stratified_folds(y, 5, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 4, 4, 5]
    for c in (0, 1):
        assert np.bincount(folds[y == c], minlength=5).max() <= 3


def test_content_hash_of_bytes_and_pixels():
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert analysis.content_hash(pixels) == analysis.content_hash(pixels.copy())
    assert analysis.content_hash(pixels) != analysis.content_hash(pixels.reshape(3, 2, 2))
    assert analysis.content_hash(pixels) != analysis.content_hash(pixels.astype(np.int16))
    assert analysis.content_hash(b"abc") == analysis.content_hash(bytearray(b"abc"))


def test_deferred_checks_give_no_verdict_and_the_rest_is_unchanged():
    """Deferring label errors and outliers (the default before training) leaves duplicates and
    balance exactly as the full run finds them, and gives the deferred sections no count."""
    x, y, splits, paths = clusters()
    given = y.copy()
    given[[2, 45]] = (y[[2, 45]] + 1) % 4
    x = np.vstack([x, x[7:8]])  # an exact copy
    given, splits, paths = np.append(given, y[7]), splits + ["val"], paths + ["ant/copy.jpg"]
    full = run(x, given, splits, paths)
    part = run(x, given, splits, paths, deferred=("outliers", "label_errors"))
    assert full["checks"] == ["duplicates", "balance", "label_errors", "outliers"]
    assert full["deferred"] == [] and full["label_errors"]["num_likely"] == 2
    assert part["checks"] == ["duplicates", "balance"]
    assert part["deferred"] == ["label_errors", "outliers"]  # in the report's order
    assert part["duplicates"] == full["duplicates"] and part["balance"] == full["balance"]
    assert part["label_errors"]["num_likely"] is None and part["label_errors"]["deferred"]
    assert part["outliers"]["num_outliers"] is None and part["outliers"]["deferred"]
    assert part["summary"] == (
        "doctor: 1 duplicate group (1 across train/val), balance ok; "
        "label errors and outliers deferred"
    )
    only = run(x, given, splits, paths, deferred=("outliers",))
    assert only["label_errors"] == full["label_errors"] and only["outliers"]["deferred"]
    assert only["summary"].endswith("2 likely label errors, balance ok; outliers deferred")


@pytest.mark.parametrize("check", ["duplicates", "balance", "typo"])
def test_duplicates_and_balance_cannot_be_deferred(check):
    from tl_keras.errors import ConfigError

    x, y, splits, paths = clusters(per_class=10)
    with pytest.raises(ConfigError, match=f"cannot defer {check}: only label_errors, outliers"):
        run(x, y, splits, paths, deferred=(check,))


def test_without_statistics_nothing_is_deferred():
    """Too few images for label and outlier statistics: they say `not checked`, not `deferred`
    (a later run would not check them either)."""
    x, y, splits, paths = clusters(per_class=3)
    report = run(x, y, splits, paths, deferred=analysis.DEFERRABLE)
    assert report["deferred"] == [] and report["checks"] == ["duplicates", "balance"]
    assert not report["label_errors"]["checked"] and "deferred" not in report["label_errors"]
    assert "deferred" not in report["summary"]
