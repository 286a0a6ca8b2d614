"""Folds: no group in two folds, every category with >= K groups in every val fold, seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nucdet.data.coco import CocoBuilder
from nucdet.data.folds import coco_folds, stratified_group_kfold


def _items(seed: int = 0):
    """Groups of 1-6 items; strata with 12, 9, 5 and 3 groups (the last one below K=5)."""
    rng = np.random.default_rng(seed)
    groups, strata = [], []
    for stratum, n_groups in (("cort", 12), ("shsy5y", 9), ("astro", 5), ("rare", 3)):
        for g in range(n_groups):
            size = int(rng.integers(1, 7))
            groups += [f"{stratum}-{g}"] * size
            strata += [stratum] * size
    return groups, strata


def _check_invariants(groups, strata, folds, k):
    folds = np.asarray(folds)
    assert folds.min() >= 0 and folds.max() < k
    fold_of = {}
    for g, f in zip(groups, folds):
        assert fold_of.setdefault(g, f) == f, f"group {g} in folds {fold_of[g]} and {f}"
    n_groups = {s: len({g for g, t in zip(groups, strata) if t == s}) for s in set(strata)}
    for s, n in n_groups.items():
        present = {f for f, t in zip(folds, strata) if t == s}
        if n >= k:
            assert present == set(range(k)), (s, present)
        else:
            assert len(present) == n  # fewer groups than folds: one group per fold


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_stratified_invariants(k, seed):
    groups, strata = _items(seed)
    folds = stratified_group_kfold(groups, strata, k, seed)
    _check_invariants(groups, strata, folds, k)
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 6  # balanced to within one group


def test_deterministic_for_a_seed_and_independent_of_order():
    groups, strata = _items()
    a = stratified_group_kfold(groups, strata, 5, seed=3)
    b = stratified_group_kfold(groups, strata, 5, seed=3)
    assert np.array_equal(a, b)
    perm = np.random.default_rng(9).permutation(len(groups))
    c = stratified_group_kfold([groups[i] for i in perm], [strata[i] for i in perm], 5, seed=3)
    assert np.array_equal(c, a[perm])
    others = [stratified_group_kfold(groups, strata, 5, seed=s) for s in range(4, 8)]
    assert any(not np.array_equal(o, a) for o in others)  # the seed matters


def test_group_of_mixed_strata_goes_by_majority():
    groups = ["g1", "g1", "g1", "g2", "g3"]
    strata = ["a", "b", "b", "a", "a"]
    folds = stratified_group_kfold(groups, strata, 2, seed=0)
    assert folds[0] == folds[1] == folds[2]
    # g1 counts as stratum b; g2 and g3 (stratum a) must then be split over the 2 folds
    assert folds[3] != folds[4]


def test_too_few_groups():
    with pytest.raises(ValueError, match="2 groups cannot fill 3 folds"):
        stratified_group_kfold(["a", "b"], ["x", "x"], 3)


def _sartorius_like_coco(path):
    groups, strata = _items(1)
    names = ["astro", "cort", "rare", "shsy5y"]
    b = CocoBuilder(names)
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    for i, (g, s) in enumerate(zip(groups, strata)):
        b.add_image(f"im{i}.png", 4, 4, [m, m], [names.index(s) + 1] * 2, sample_id=g, cell_type=s)
    b.add_image("empty.png", 4, 4, sample_id="cort-0", cell_type="cort")
    b.write(path)
    return b.to_dict()


def test_coco_folds_writes_disjoint_complete_registrable_files(tmp_path):
    coco = _sartorius_like_coco(tmp_path / "train.json")
    paths = coco_folds(tmp_path / "train.json", k=4, seed=0, out_dir=tmp_path / "folds")
    assert [(p.name, q.name) for p, q in paths] == [
        (f"train_fold{f}_train.json", f"train_fold{f}_val.json") for f in range(4)
    ]
    all_ids = {i["id"] for i in coco["images"]}
    sample_of = {i["id"]: i["sample_id"] for i in coco["images"]}
    seen_val = set()
    for f, (tp, vp) in enumerate(paths):
        train, val = json.loads(tp.read_text()), json.loads(vp.read_text())
        t_ids, v_ids = {i["id"] for i in train["images"]}, {i["id"] for i in val["images"]}
        assert t_ids | v_ids == all_ids and not (t_ids & v_ids)
        assert not ({sample_of[i] for i in t_ids} & {sample_of[i] for i in v_ids})
        assert not (seen_val & v_ids)
        seen_val |= v_ids
        for part, ids in ((train, t_ids), (val, v_ids)):
            assert {a["image_id"] for a in part["annotations"]} <= ids
            assert len(part["annotations"]) == sum(
                1 for a in coco["annotations"] if a["image_id"] in ids
            )
            assert part["categories"] == coco["categories"]
            assert part["info"]["fold"] == f
        v_types = {i["cell_type"] for i in val["images"]}
        assert {"astro", "cort", "shsy5y"} <= v_types  # >= 4 groups each
    assert seen_val == all_ids


def test_coco_folds_per_image_and_key_errors(tmp_path):
    _sartorius_like_coco(tmp_path / "t.json")
    paths = coco_folds(tmp_path / "t.json", k=3, group_key="image", stratify_key="cell_type")
    assert paths[0][0] == tmp_path / "t_fold0_train.json"
    with pytest.raises(KeyError, match="im0.png"):
        coco_folds(tmp_path / "t.json", k=3, group_key="plate")
    with pytest.raises(KeyError, match="modality"):
        coco_folds(tmp_path / "t.json", k=3, stratify_key="modality", stem="x")
    assert not (tmp_path / "x_fold0_train.json").exists()


def test_items_without_stratum_do_not_decide_the_group():
    groups = ["g1", "g1", "g2", "g3", "g4"]
    strata = [None, "a", "b", "a", "b"]
    folds = stratified_group_kfold(groups, strata, 2, seed=0)
    # g1 is stratum a (not None): a = {g1, g3} and b = {g2, g4} each split over both folds
    assert folds[0] == folds[1]
    assert folds[1] != folds[3] and folds[2] != folds[4]
