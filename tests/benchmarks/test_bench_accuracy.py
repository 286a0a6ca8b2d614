"""benchmarks/bench_accuracy.py: the paired comparison of result rows, the training-image
sample and the per-method settings (the statistic itself: tests/evaluation/test_stats.py)."""

import json
from pathlib import Path

import pytest
from bench_accuracy import compare

from nucdet.evaluation.stats import paired_difference

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_systematic_sample_is_evenly_spaced_by_file_name():
    from bench_accuracy import systematic_sample

    dicts = [{"file_name": f"img{i:03d}.png"} for i in range(100)][::-1]  # any input order
    got = [d["file_name"] for d in systematic_sample(dicts, 10)]
    assert got == [f"img{i:03d}.png" for i in range(0, 100, 10)]
    assert len(systematic_sample(dicts, 500)) == 100  # never more than there is


def test_settings_opts_take_each_methods_best_row():
    from bench_accuracy import settings_opts

    sweep = {
        "recipe": [{"mask_thresh": 0.5, "score_thresh": 0.8, "min_area": 15, "MaP-IoU": 0.5},
                   {"mask_thresh": 0.4, "score_thresh": 0.6, "min_area": 0, "MaP-IoU": 0.4}],
        "ensemble": [{"mask_thresh": 0.4, "score_thresh": 0.6, "min_area": 0, "MaP-IoU": 0.6}],
    }  # fmt: skip
    opts = settings_opts(sweep)
    assert opts["recipe"] == ["POSTPROCESS.MASK_THRESH", "0.5", "POSTPROCESS.SCORE_THRESH",
                              "[0.8]", "POSTPROCESS.MIN_AREA", "[15]"]  # fmt: skip
    assert opts["ensemble"][1::2] == ["0.4", "[0.6]", "[0]"]


def test_compare_rows_of_two_result_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"recipe": {"per_image": {"x": 0.5, "y": 0.7, "z": 0.4}}}}))
    b.write_text(
        json.dumps({"results": {"watershed": {"per_image": {"x": 0.3, "y": 0.7, "z": 0.5}}}})
    )
    d = compare(f"{a}:recipe", f"{b}:watershed")
    # by hand: differences +0.2, 0, -0.1
    assert d["mean"] == pytest.approx(0.1 / 3)
    assert (d["better"], d["worse"], d["n"]) == (1, 1, 3)
    assert compare(f"{b}:watershed", f"{a}:recipe")["mean"] == pytest.approx(-0.1 / 3)
    with pytest.raises(KeyError, match="no method 'second'"):
        compare(f"{a}:second", f"{b}:watershed")


def test_compare_refuses_different_images(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"m": {"per_image": {"x": 0.5, "y": 0.7}}}}))
    b.write_text(json.dumps({"results": {"m": {"per_image": {"x": 0.5}}}}))
    with pytest.raises(ValueError, match="different images"):
        compare(f"{a}:m", f"{b}:m")


@pytest.mark.parametrize(
    "name",
    [
        "accuracy.json",
        "accuracy_both_cores.json",
        "accuracy_both_cores_seed2.json",
        "accuracy_unet.json",
        "accuracy_pair.json",
    ],
)
def test_committed_differences_are_reproduced_from_their_per_image_scores(name):
    """Every committed ``vs_watershed`` (RESULTS.md's difference column) is what
    ``paired_difference`` computes from the committed per-image scores, to the last bit."""
    results = json.loads((RESULTS / name).read_text())["results"]
    base = results["watershed"]["per_image"]
    checked = 0
    for method, r in results.items():
        if method != "watershed":
            assert paired_difference(r["per_image"], base) == r["vs_watershed"], method
            checked += 1
    assert checked >= 1


def test_rerun_method_fuses_by_mask_head_rerun_with_the_flip_tta_settings(tmp_path):
    import yaml
    from bench_accuracy import method_commands

    flip = ["POSTPROCESS.MASK_THRESH", "0.5", "POSTPROCESS.SCORE_THRESH", "[0.93]",
            "POSTPROCESS.MIN_AREA", "[15]"]  # fmt: skip
    cmds = method_commands("ds", tmp_path, tmp_path / "m0", None, ["INPUT.MIN_SIZE_TEST", "576"],
                           {"recipe+flipTTA": flip})  # fmt: skip
    rerun, vote = cmds["recipe+flipTTA+rerun"], cmds["recipe+flipTTA"]
    assert rerun[-8:] == vote[-8:] == ["INPUT.MIN_SIZE_TEST", "576", *flip]
    spec = yaml.safe_load((tmp_path / "recipe_fliptta_rerun.yaml").read_text())
    voted = yaml.safe_load((tmp_path / "recipe_fliptta.yaml").read_text())
    assert spec["fusion"]["method"] == "wbf_mask_rerun"
    assert voted["fusion"]["method"] == "wbf_mask_vote"
    assert spec["views"] == voted["views"] == ["identity", "hflip", "vflip"]
    assert {k: v for k, v in spec["fusion"].items() if k != "method"} == {
        k: v for k, v in voted["fusion"].items() if k != "method"
    }


def test_fg_reweight_method_routes_the_unet_foreground_and_its_own_opts(tmp_path):
    """Across families: the second model (a U-Net) gets ``second_opts`` in its own
    ``infer.py`` and as its member's ``opts`` in the fused YAMLs (never the first model's);
    ``fg_reweight`` fuses by ``unet_fg_reweight`` with the second member (``m1``) as the
    foreground source and the ``alpha`` chosen by the sweep; the YAML loads in
    ``EnsembleSpec`` as ``ensemble_infer.py`` reads it."""
    import yaml
    from bench_accuracy import method_commands, settings_fusion

    from nucdet.inference.ensemble import EnsembleSpec

    dec = ["MODEL.UNET.DECODE.FG_THRESH", "0.4"]
    sweep = {"fg_reweight": [{"alpha": 0.75, "mask_thresh": 0.4, "score_thresh": 0.8,
                              "min_area": 15, "MaP-IoU": 0.6},
                             {"alpha": 0.25, "mask_thresh": 0.5, "score_thresh": 0.8,
                              "min_area": 15, "MaP-IoU": 0.5}],
             "ensemble": [{"mask_thresh": 0.4, "score_thresh": 0.6, "min_area": 0,
                           "MaP-IoU": 0.6}]}  # fmt: skip
    fusion = settings_fusion(sweep)
    assert fusion == {"fg_reweight": {"alpha": 0.75}}  # only rows that have an alpha
    cmds = method_commands("ds", tmp_path, tmp_path / "rcnn", tmp_path / "unet",
                           ["INPUT.MIN_SIZE_TEST", "576"], None, dec, fusion)  # fmt: skip
    second, recipe = cmds["second"], cmds["recipe"]
    assert second[second.index("--model-dir") + 1] == str(tmp_path / "unet")
    assert second[-2:] == dec and "MODEL.UNET.DECODE.FG_THRESH" not in recipe
    spec = yaml.safe_load((tmp_path / "fg_reweight.yaml").read_text())
    assert spec["fusion"]["method"] == "unet_fg_reweight"
    assert spec["fusion"]["fg_models"] == ["m1"] and spec["fusion"]["alpha"] == 0.75
    assert [m["name"] for m in spec["models"]] == ["m0", "m1"]
    assert "opts" not in spec["models"][0] and spec["models"][1]["opts"] == dec
    assert spec["models"][1]["config"] == str(tmp_path / "unet" / "config.yaml")
    voted = yaml.safe_load((tmp_path / "ensemble.yaml").read_text())
    assert voted["fusion"]["method"] == "wbf_mask_vote" and voted["models"][1]["opts"] == dec
    flip = yaml.safe_load((tmp_path / "fg_reweight_fliptta.yaml").read_text())
    assert flip["views"] == ["identity", "hflip", "vflip"] and flip["fusion"]["alpha"] == 0.5
    for s in (spec, voted, flip):
        EnsembleSpec.from_dict(s, "test")


def test_unet_opts_name_the_config_keys():
    from bench_accuracy import unet_opts
    from detectron2.config import get_cfg

    from nucdet.config import add_nucdet_config

    opts = unet_opts({"fg_thresh": 0.4, "marker_thresh": 0.35}, 0.3, 0.6, 15)
    assert opts == ["MODEL.UNET.DECODE.FG_THRESH", "0.4", "MODEL.UNET.DECODE.MARKER_THRESH",
                    "0.35", "POSTPROCESS.MASK_THRESH", "0.3", "POSTPROCESS.SCORE_THRESH",
                    "[0.6]", "POSTPROCESS.MIN_AREA", "[15]"]  # fmt: skip
    cfg = add_nucdet_config(get_cfg())
    cfg.merge_from_list(opts)  # every key exists
    assert cfg.MODEL.UNET.DECODE.MARKER_THRESH == 0.35 and cfg.POSTPROCESS.MIN_AREA == [15]


def test_compare_by_modality_pairs_images_within_each_modality(tmp_path):
    from bench_accuracy import compare_by_modality

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    mod = {"x": "fluorescence", "y": "fluorescence", "z": "stained"}
    a.write_text(json.dumps({"modality_of": mod, "results": {
        "unet": {"per_image": {"x": 0.6, "y": 0.7, "z": 0.1}}}}))  # fmt: skip
    b.write_text(json.dumps({"results": {"rcnn": {"per_image": {"x": 0.5, "y": 0.8, "z": 0.3}}}}))
    g = compare_by_modality(f"{a}:unet", f"{b}:rcnn")
    # by hand: fluorescence +0.1 and -0.1 (mean 0), stained -0.2
    assert sorted(g) == ["fluorescence", "stained"]
    assert g["fluorescence"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert (g["fluorescence"]["better"], g["fluorescence"]["worse"]) == (1, 1)
    assert g["stained"]["mean"] == pytest.approx(-0.2) and g["stained"]["n"] == 1
    with pytest.raises(ValueError, match="modality_of"):
        compare_by_modality(f"{b}:rcnn", f"{b}:rcnn")


def test_compare_takes_a_single_result_file_with_dash(tmp_path):
    """``FILE:-``: a file of one result (bench_cellpose's cellpose_metrics.json, infer.py's
    metrics.json) against a row of this script's files, per modality from the latter."""
    from bench_accuracy import compare_by_modality

    one, rows = tmp_path / "cellpose_metrics.json", tmp_path / "a.json"
    one.write_text(json.dumps({"MaP-IoU": 0.4, "per_image": {"x": 0.2, "z": 0.6}}))
    mods = {"x": "fluorescence", "z": "stained"}
    rows.write_text(
        json.dumps({"modality_of": mods, "results": {"m": {"per_image": {"x": 0.5, "z": 0.5}}}})
    )
    d = compare(f"{one}:-", f"{rows}:m")
    assert d["mean"] == pytest.approx((-0.3 + 0.1) / 2)  # by hand
    g = compare_by_modality(f"{one}:-", f"{rows}:m")
    assert g["fluorescence"]["mean"] == pytest.approx(-0.3)
    assert g["stained"]["mean"] == pytest.approx(0.1)
    with pytest.raises(KeyError, match="no top-level per_image"):
        compare(f"{rows}:-", f"{rows}:m")


def test_unet_grid_of_a_scalar_stops_before_any_model_is_loaded(capsys):
    """A grid value that is not a non-empty list (``{"fg_thresh": 0.4}``) is an argument
    error naming the key, before the (here absent) model is read."""
    from bench_accuracy import main

    with pytest.raises(SystemExit) as e:
        main(["--model-dir", "/nonexistent", "--sweep-unet", "4",
              "--unet-grid", '{"fg_thresh": 0.4, "min_area": [30]}'])  # fmt: skip
    assert e.value.code == 2
    assert "fg_thresh" in capsys.readouterr().err
