"""infer.py / ensemble_infer.py end to end on a small random-init model: submissions,
no overlaps, every image present, resume after a kill, routing, single = ensemble of one."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import ensemble_infer
import infer
from nucdet.inference.ensemble import EnsemblePredictor, EnsembleSpec, ModelSpec
from nucdet.inference.pipeline import PARTIAL_NAME, folder_inputs, run_inference
from nucdet.io.rle import rle_decode

OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "25",
    "POSTPROCESS.SCORE_THRESH",
    "[0.0]",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    cfg = tiny_cfg(*OPTS, "OUTPUT_DIR", str(d))
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_root):
    """Three small sample images in a flat folder."""
    d = tmp_path_factory.mktemp("images")
    split = json.loads((sample_root / "split.json").read_text())
    samples = json.loads((sample_root / "samples.json").read_text())
    small = [i for i in split["val"] if samples[i]["height"] == 256][:3]
    for i in small:
        src = sample_root / "stage1_train" / i / "images" / f"{i}.png"
        (d / f"{i}.png").write_bytes(src.read_bytes())
    return d


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _check_submission(path, image_dir):
    rows = _rows(path)
    assert rows[0] == ["id", "predicted"]
    ids = {p.stem for p in Path(image_dir).glob("*.png")}
    assert {r[0] for r in rows[1:]} == ids  # every image present
    for image_id in ids:
        occupied = np.zeros((256, 256), np.int32)
        for r in rows[1:]:
            if r[0] == image_id and r[1]:
                occupied += rle_decode(r[1], (256, 256), "C")
        assert occupied.max() <= 1  # no pixel in two masks
    return rows


def test_infer_writes_submission_overlays_metrics(model_dir, images, tmp_path, registered):
    out = tmp_path / "out"
    infer.main(["--model-dir", str(model_dir), "--input", str(images), "--output", str(out)])
    rows = _check_submission(out / "submission.csv", images)
    assert len(rows) > 4  # the random model does predict instances
    assert len(list((out / "overlays").glob("*.png"))) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 3 and "MaP-IoU" not in metrics  # a folder has no GT
    # Same code path: an ensemble of this one model with the identity view is identical.
    out2 = tmp_path / "out2"
    ensemble_infer.main(
        [
            "--model-dir",
            str(model_dir),
            "--views",
            "identity",
            "--input",
            str(images),
            "--output",
            str(out2),
        ]
    )
    assert (out2 / "submission.csv").read_bytes() == (out / "submission.csv").read_bytes()


def test_tta_ensemble_resumes_to_the_same_file(model_dir, images, tmp_path, registered):
    spec = EnsembleSpec(
        [
            ModelSpec("a", model_dir=str(model_dir)),
            ModelSpec("b", model_dir=str(model_dir), weight=0.5),
        ],
        views=["identity", "hflip", "rot90"],
    )
    predictor = EnsemblePredictor(spec)
    inputs = folder_inputs(images)
    full = tmp_path / "full"
    run_inference(inputs, predictor, full)
    _check_submission(full / "submission.csv", images)

    # A killed run: two images done, the third half-written; no submission yet.
    # (Line 0 is the run's fingerprint.)
    part = tmp_path / "part"
    part.mkdir()
    lines = (full / PARTIAL_NAME).read_text().splitlines(keepends=True)
    (part / PARTIAL_NAME).write_text(
        lines[0] + lines[1] + lines[2] + lines[3][: len(lines[3]) // 2]
    )
    calls = []

    def counting(image, item):
        calls.append(item.image_id)
        return predictor(image, item)

    run_inference(inputs, counting, part)
    assert calls == [inputs[2].image_id]  # only the unfinished image is predicted again
    assert (part / "submission.csv").read_bytes() == (full / "submission.csv").read_bytes()


def test_routing_by_ids_file(model_dir, images, tmp_path, registered):
    inputs = folder_inputs(images)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(inputs[0].image_id + "\n")
    only = EnsemblePredictor(
        EnsembleSpec([ModelSpec("a", model_dir=str(model_dir), route={"ids_file": str(ids_file)})])
    )
    with pytest.raises(ValueError, match="no model is routed"):
        only(np.zeros((256, 256, 3), np.uint8), inputs[1])
    # Two models, the second routed to image 0 only: image 1 gets model a alone.
    both = EnsemblePredictor(
        EnsembleSpec(
            [
                ModelSpec("a", model_dir=str(model_dir)),
                ModelSpec("b", model_dir=str(model_dir), route={"ids_file": str(ids_file)}),
            ]
        )
    )
    single = EnsemblePredictor(EnsembleSpec([ModelSpec("a", model_dir=str(model_dir))]))
    from nucdet.data.imageio import read_image

    image = read_image(inputs[1].file_name)
    assert len(both.raw_views(image, inputs[1])[0]) == 1
    assert len(both.raw_views(image, inputs[0])[0]) == 2
    a, b = both(image, inputs[1]), single(image, inputs[1])
    assert a.rles == b.rles and np.array_equal(a.scores, b.scores)


def test_bad_ensemble_yaml(tmp_path):
    bad = tmp_path / "e.yaml"
    bad.write_text("models: [{name: a, model_dir: x}]\nfusoin: {}\n")
    with pytest.raises(ValueError, match="fusoin"):
        EnsembleSpec.from_yaml(bad)
    bad.write_text("models: [{name: a, model_dir: x}]\nfusion: {method: vote3}\n")
    with pytest.raises(ValueError, match="vote3"):
        EnsembleSpec.from_yaml(bad)


@pytest.fixture(scope="module")
def two_modalities(tmp_path_factory, sample_root):
    """A flat folder (no metadata) with one fluorescence and one stained sample image."""
    d = tmp_path_factory.mktemp("modalities")
    samples = json.loads((sample_root / "samples.json").read_text())
    picked = {}
    for i, m in sorted(samples.items()):
        if m["height"] == 256 and m["modality"] in ("fluorescence", "stained"):
            picked.setdefault(m["modality"], i)
    for modality, i in picked.items():
        src = sample_root / "stage1_train" / i / "images" / f"{i}.png"
        (d / f"{modality}_{i[:8]}.png").write_bytes(src.read_bytes())
    return d


def test_routing_by_modality_on_folder_input(model_dir, two_modalities, tmp_path, registered):
    """The Kaggle case: images from --input carry no metadata; the modality route is
    computed from the pixels, so model b runs on the stained image only."""
    from nucdet.data.imageio import read_image

    spec = EnsembleSpec.from_dict(
        {
            "models": [
                {"name": "a", "model_dir": str(model_dir)},
                {
                    "name": "b",
                    "model_dir": str(model_dir),
                    "route": {"key": "modality", "values": ["stained"]},
                },
            ]
        }
    )
    ens = EnsemblePredictor(spec)
    inputs = folder_inputs(two_modalities)
    assert all(i.extra is None for i in inputs)
    ens.check_routes(inputs)
    routed = {i.image_id.split("_")[0]: ens.routed(read_image(i.file_name), i) for i in inputs}
    assert routed == {"fluorescence": ["a"], "stained": ["a", "b"]}
    stained = next(i for i in inputs if i.image_id.startswith("stained"))
    assert len(ens.raw_views(read_image(stained.file_name), stained)[0]) == 2


def test_routes_that_can_never_match_are_errors(model_dir, two_modalities, tmp_path, registered):
    def spec(route):
        return {"models": [{"name": "a", "model_dir": str(model_dir), "route": route}]}

    with pytest.raises(ValueError, match="modality is never"):
        EnsembleSpec.from_dict(spec({"key": "modality", "values": ["fluorecence"]}), "e.yaml")
    with pytest.raises(ValueError, match="non-empty"):
        EnsembleSpec.from_dict(spec({"key": "modality", "values": []}), "e.yaml")
    with pytest.raises(ValueError, match="ids_file"):
        EnsembleSpec.from_dict(spec({"keys": "modality"}), "e.yaml")
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("not_an_input\n")
    for route, message in (
        ({"ids_file": str(ids_file)}, "names none of the 2 input images"),
        ({"key": "cell_type", "values": ["astro"]}, "cannot be computed from the pixels"),
    ):
        with pytest.raises(ValueError, match=message):
            ensemble_infer.run_from_args(
                EnsembleSpec.from_dict(spec(route)),
                ensemble_infer.parse_args(
                    ["--model-dir", "unused", "--input", str(two_modalities)]
                    + ["--output", str(tmp_path / "never")]
                ),
            )
        assert not (tmp_path / "never" / "submission.csv").exists()


def test_command_line_postprocess_wins_over_the_yaml_with_a_warning(model_dir, caplog):
    import logging

    spec = EnsembleSpec.from_dict(
        {
            "models": [{"name": "a", "model_dir": str(model_dir)}],
            "postprocess": {"SCORE_THRESH": [0.5], "MIN_AREA": [10], "FILL_HOLES": True},
        }
    )
    opts = ["POSTPROCESS.SCORE_THRESH", "[0.7]", "POSTPROCESS.FILL_HOLES", "True"]
    with caplog.at_level(logging.WARNING, logger="nucdet.inference.ensemble"):
        ens = EnsemblePredictor(spec, opts)
    assert list(ens.cfg.POSTPROCESS.SCORE_THRESH) == [0.7]  # command line
    assert list(ens.cfg.POSTPROCESS.MIN_AREA) == [10]  # YAML (no clash)
    assert ens.cfg.POSTPROCESS.FILL_HOLES is True  # both say True: no warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "POSTPROCESS.SCORE_THRESH" in warnings[0] and "[0.7]" in warnings[0]


def test_infer_in_bf16(model_dir, images, tmp_path, registered):
    """TEST.PRECISION from infer.py's command line reaches the model's Predictor, and a bf16
    run writes a valid submission (the image present, no pixel in two masks)."""
    spec = EnsembleSpec([ModelSpec("model", model_dir=str(model_dir))], views=["identity"])
    assert EnsemblePredictor(spec).members[0][1].precision == "fp32"
    assert EnsemblePredictor(spec, ["TEST.PRECISION", "bf16"]).members[0][1].precision == "bf16"
    one = tmp_path / "one"  # bf16 is emulated (slow) on CPUs without bf16 units: one image
    one.mkdir()
    first = sorted(images.glob("*.png"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "bf16"
    infer.main(
        ["--model-dir", str(model_dir), "--input", str(one), "--output", str(out)]
        + ["TEST.PRECISION", "bf16"]
    )
    rows = _check_submission(out / "submission.csv", one)
    assert len(rows) > 2  # the random model does predict instances
