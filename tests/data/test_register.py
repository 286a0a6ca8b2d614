"""Registration: predefined sample splits, idempotence, cache rebuild, grouped folds."""

import json
import shutil

from detectron2.data import DatasetCatalog, MetadataCatalog

from nucdet.data.dsb import dsb_to_coco
from nucdet.data.register import register_coco, register_dsb_folder


def test_sample_splits(registered, sample_root):
    split = json.loads((sample_root / "split.json").read_text())
    train = DatasetCatalog.get("dsb2018_sample_train")
    val = DatasetCatalog.get("dsb2018_sample_val")
    stem = lambda d: d["file_name"].rsplit("/", 1)[-1][:-4]  # noqa: E731
    assert sorted(map(stem, train)) == sorted(split["train"])
    assert sorted(map(stem, val)) == sorted(split["val"])
    assert not set(map(stem, train)) & set(map(stem, val))
    assert MetadataCatalog.get("dsb2018_sample_val").thing_classes == ["nucleus"]
    d = val[0]
    assert d["annotations"][0]["category_id"] == 0 and "modality" in d


def test_register_coco_idempotent_and_replaceable(tmp_path, sample_root):
    root = sample_root / "stage1_train"
    ids = sorted(p.name for p in root.iterdir())
    a = dsb_to_coco(root, tmp_path / "a.json", image_ids=ids[:2])
    b = dsb_to_coco(root, tmp_path / "b.json", image_ids=ids[:3])
    register_coco("test_reg_x", a, root)
    register_coco("test_reg_x", a, root)  # same files: no error
    assert len(DatasetCatalog.get("test_reg_x")) == 2
    register_coco("test_reg_x", b, root)  # other file: replaced
    assert len(DatasetCatalog.get("test_reg_x")) == 3


def test_cache_rebuilt_when_source_changes(tmp_path, sample_root, monkeypatch):
    monkeypatch.setenv("NUCDET_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "dsb" / "stage1_train"
    ids = sorted(p.name for p in (sample_root / "stage1_train").iterdir())[:3]
    for i in ids:
        shutil.copytree(sample_root / "stage1_train" / i, src / i)
    register_dsb_folder("test_cache", src, split={"part": ids})
    assert len(DatasetCatalog.get("test_cache_part")) == 3
    n_before = sum(len(d["annotations"]) for d in DatasetCatalog.get("test_cache_part"))
    first_mask = sorted((src / ids[0] / "masks").iterdir())[0]
    first_mask.unlink()
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get("test_cache_part")) == (
        n_before - 1
    )
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_predefined_dsb_folds_partition_images(tmp_path, sample_root, monkeypatch):
    """dsb2018_fold{k}: every image in exactly one val fold; train = the rest."""
    monkeypatch.setenv("NUCDET_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "dsb" / "stage1_train"
    shutil.copytree(sample_root / "stage1_train", root)
    shutil.copy(sample_root / "samples.json", root.parent / "samples.json")
    register_dsb_folder("test_folds", root, num_folds=3)
    stems = lambda n: {d["file_name"].rsplit("/", 1)[-1][:-4] for d in DatasetCatalog.get(n)}  # noqa: E731
    all_ids = {p.name for p in root.iterdir()}
    vals = [stems(f"test_folds_fold{k}_val") for k in range(3)]
    assert set().union(*vals) == all_ids and sum(map(len, vals)) == len(all_ids)
    samples = json.loads((root.parent / "samples.json").read_text())
    for k in range(3):
        assert stems(f"test_folds_fold{k}_train") == all_ids - vals[k]
        # 6 stained images (>= 3 groups): the stratum appears in every val fold
        assert any(samples[i]["modality"] == "stained" for i in vals[k])


def test_predefined_sartorius_folds_grouped_by_sample(tmp_path, sample_root, monkeypatch):
    """sartorius_fold{k}: folds partition the images, and no sample_id is split."""
    from nucdet.data.register import SARTORIUS_CLASSES, register_sartorius
    from nucdet.data.samples import make_sartorius_from_dsb

    monkeypatch.setenv("NUCDET_CACHE", str(tmp_path / "cache"))
    ids = sorted(p.name for p in (sample_root / "stage1_train").iterdir())[:12]
    csv_file = make_sartorius_from_dsb(sample_root / "stage1_train", tmp_path / "sart", ids)
    register_sartorius("test_sart", csv_file.parent, num_folds=3)
    full = DatasetCatalog.get("test_sart_train")
    assert len(full) == 12
    assert MetadataCatalog.get("test_sart_train").thing_classes == SARTORIUS_CLASSES
    sample_of = {d["image_id"]: d["sample_id"] for d in full}
    vals = [{d["image_id"] for d in DatasetCatalog.get(f"test_sart_fold{k}_val")} for k in range(3)]
    assert set().union(*vals) == set(sample_of) and sum(map(len, vals)) == 12
    for k in range(3):
        train = {d["image_id"] for d in DatasetCatalog.get(f"test_sart_fold{k}_train")}
        assert train == set(sample_of) - vals[k]
        assert not {sample_of[i] for i in train} & {sample_of[i] for i in vals[k]}


def test_register_all_with_another_root_re_registers(tmp_path, sample_root, monkeypatch):
    """A second register_all with another DATASETS.ROOT points the predefined names at it
    (the first root used to win silently)."""
    from detectron2.config import get_cfg

    from nucdet.config import add_nucdet_config
    from nucdet.data.register import register_all

    monkeypatch.setenv("NUCDET_CACHE", str(tmp_path / "cache"))
    ids = sorted(p.name for p in (sample_root / "stage1_train").iterdir())
    for root, n in (("a", 2), ("b", 6)):
        for i in ids[:n]:
            shutil.copytree(
                sample_root / "stage1_train" / i, tmp_path / root / "dsb2018" / "stage1_train" / i
            )
    cfg = add_nucdet_config(get_cfg())
    try:
        cfg.DATASETS.ROOT = str(tmp_path / "a")
        register_all(cfg)
        assert len(DatasetCatalog.get("dsb2018_all")) == 2
        register_all(cfg)  # same root: nothing changes
        assert len(DatasetCatalog.get("dsb2018_all")) == 2
        cfg.DATASETS.ROOT = str(tmp_path / "b")
        register_all(cfg)
        assert len(DatasetCatalog.get("dsb2018_all")) == 6
        # the folds follow the root: 6 images over 5 folds
        assert sum(len(DatasetCatalog.get(f"dsb2018_fold{k}_val")) for k in range(5)) == 6
    finally:
        register_all()  # back to the default root for the other tests


def test_dsb_folds_without_samples_json_use_computed_modality(
    tmp_path, sample_root, monkeypatch, caplog
):
    """No samples.json (the Kaggle download): the modality is computed from each image;
    it equals the labels on the sample, so the folds are those made with samples.json."""
    import logging

    monkeypatch.setenv("NUCDET_CACHE", str(tmp_path / "cache"))
    with_sj = tmp_path / "with" / "stage1_train"
    without = tmp_path / "without" / "stage1_train"
    shutil.copytree(sample_root / "stage1_train", with_sj)
    shutil.copytree(sample_root / "stage1_train", without)
    shutil.copy(sample_root / "samples.json", with_sj.parent / "samples.json")
    register_dsb_folder("test_sj", with_sj, num_folds=3)
    with caplog.at_level(logging.WARNING, logger="nucdet.data.register"):
        register_dsb_folder("test_nosj", without, num_folds=3)
        stems = lambda n: sorted(d["file_name"].split("/")[0] for d in DatasetCatalog.get(n))  # noqa: E731
        for k in range(3):
            assert stems(f"test_nosj_fold{k}_val") == stems(f"test_sj_fold{k}_val")
    assert "no samples.json" in caplog.text and "computed" in caplog.text
