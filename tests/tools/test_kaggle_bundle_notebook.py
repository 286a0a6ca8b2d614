"""The offline Kaggle bundle end to end, on an image that is not ours: build the bundle
(registry wheels for Python 3.11) for a tiny model and a flip-TTA ensemble of it, then run
its notebook headless (nbclient) in a fresh virtual environment that, like a Kaggle image,
has its own torch, torchvision and Jupyter, a torch release DIFFERENT from this
environment's (torch 2.9.1 + torchvision 0.24.1), no nucdet, no detectron2, every PIP_*
variable removed and no package index: the notebook must build detectron2 from the
bundle's source against that torch and write valid submissions, once with the single
model, once with the ensemble.

Slow (10-20 minutes on 2 cores: the image's torch install, the bundle's wheels, the
detectron2 compile): ``make test-slow``. The image's torch comes from the registry (pip's
cache after the first run); override it with NUCDET_TEST_IMAGE_TORCH=2.9.1,0.24.1.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, SAMPLE_ROOT, tiny_cfg

pytestmark = pytest.mark.slow

IMAGE_TORCH, IMAGE_TORCHVISION = os.environ.get(
    "NUCDET_TEST_IMAGE_TORCH", "2.9.1,0.24.1"
).split(",")


def make_tiny_model_dir(out: Path) -> Path:
    """A training output dir (config.yaml + model_final.pth) of the untrained tiny model:
    its predictions are noise, but the notebook's job is a valid submission."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    out.mkdir(parents=True)
    cfg = tiny_cfg("TEST.DETECTIONS_PER_IMAGE", "30", "OUTPUT_DIR", str(out))
    (out / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(build_model(cfg), save_dir=str(out)).save("model_final", iteration=7)
    return out


def make_image_venv(venv: Path) -> Path:
    """The "Kaggle image": a fresh venv with its own torch release, torchvision and Jupyter
    (installed with the machine's usual pip set-up), and neither nucdet nor detectron2."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [
            str(py), "-m", "pip", "install", "-q", "--progress-bar", "off",
            "--disable-pip-version-check", f"torch=={IMAGE_TORCH}",
            f"torchvision=={IMAGE_TORCHVISION}", "ipykernel",
        ],
        check=True,
    )  # fmt: skip
    return py


def test_bundle_notebook_writes_valid_submissions(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from nucdet.data.imageio import image_size
    from nucdet.io.rle import rle_decode
    from nucdet.tools import kaggle_bundle

    model = make_tiny_model_dir(tmp_path / "train_out" / "tiny")
    # The shipped example ensemble (flip TTA, WBF + mask voting) pointed at the tiny model.
    ensemble = yaml.safe_load(
        (REPO / "configs" / "ensembles" / "dsb_tiny_flip_tta.yaml").read_text()
    )
    ensemble["models"] = [{"name": "tiny", "model_dir": str(model), "weight": 1.0}]
    ensemble["postprocess"] = {"SCORE_THRESH": [0.0]}
    (tmp_path / "tta.yaml").write_text(yaml.safe_dump(ensemble))
    bundle = tmp_path / "nucdet-bundle"
    manifest_path = kaggle_bundle.main(
        ["--model-dir", str(model), "--ensemble", str(tmp_path / "tta.yaml"),
         "--output", str(bundle), "--python-version", "3.11", "--source", str(REPO)]
    )  # fmt: skip
    manifest = json.loads(manifest_path.read_text())
    names = {w["name"] for w in manifest["wheels"]}
    assert {
        "nucdet", "fvcore", "iopath", "pycocotools", "ensemble-boxes", "yacs", "omegaconf",
        "hydra-core", "setuptools", "wheel", "ninja",
    } <= names  # fmt: skip
    assert not names & {"torch", "torchvision", "detectron2"}
    assert not any(n.startswith(("nvidia-", "cuda-")) for n in names)
    # The source of the pinned commit, and this machine's wheel, built for ITS torch.
    d2 = manifest["detectron2"]
    assert (bundle / d2["source"]).is_file()
    own_torch = md.version("torch").split("+")[0]
    assert [w["torch"] for w in d2["wheels"]] == [own_torch]
    assert own_torch != IMAGE_TORCH, "the image must have another torch than the builder"

    # Test images: Kaggle's test folder is flat <id>.png.
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    ids = sorted(p.name for p in (SAMPLE_ROOT / "stage1_train").iterdir())[:3]
    for i in ids:
        shutil.copy(SAMPLE_ROOT / "stage1_train" / i / "images" / f"{i}.png", test_dir)

    venv = tmp_path / "kaggle-venv"
    py = make_image_venv(venv)
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    probe = (
        "import torch, torchvision, ipykernel, importlib.util as u; "
        "print(torch.__version__.split('+')[0], u.find_spec('nucdet'), u.find_spec('detectron2'))"
    )
    res = subprocess.run(
        [str(py), "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [IMAGE_TORCH, "None", "None"], res.stdout

    kernels = tmp_path / "jupyter" / "kernels" / "kaggle-like"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "kaggle-like",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)  # e.g. PIP_FIND_LINKS: the wheels must come from the bundle
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # belt and braces: the notebook says --no-index
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")  # unreachable on purpose

    client_nb = nbformat.read(bundle / "kaggle_submission.ipynb", as_version=4)
    assert "parameters" in client_nb.cells[0].metadata.get("tags", [])

    outputs: list[str] = []

    def run_notebook(work: Path, predictor: str) -> list[list[str]]:
        """Execute the bundled notebook with papermill-style injected parameters."""
        nb = copy.deepcopy(client_nb)
        nb.cells.insert(
            1,
            nbformat.v4.new_code_cell(
                f"BUNDLE_DIR = {str(bundle)!r}\nTEST_DIR = {str(test_dir)!r}\n"
                f"WORK_DIR = {str(work)!r}\nDEVICE = 'cpu'\nPREDICTOR = {predictor!r}\n"
                "EXTRA_OPTS = ['POSTPROCESS.SCORE_THRESH', '[0.0]']\n"
            ),
        )
        work.mkdir()
        NotebookClient(
            nb, kernel_name="kaggle-like", timeout=2400, resources={"metadata": {"path": str(work)}}
        ).execute()
        outputs.append(
            "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        )
        with open(work / "submission.csv", newline="") as f:
            return list(csv.reader(f))

    def check_submission(rows: list[list[str]]) -> None:
        """id,predicted header; every image present; masks valid, non-empty, disjoint."""
        assert rows[0] == ["id", "predicted"]
        assert {r[0] for r in rows[1:]} == set(ids)
        assert any(r[1] for r in rows[1:]), "the untrained model with threshold 0 predicts"
        for image_id in ids:
            h, w = image_size(test_dir / f"{image_id}.png")
            masks = [
                rle_decode(r[1], (h, w), order="C") for r in rows[1:] if r[0] == image_id and r[1]
            ]
            assert all(m.any() for m in masks)
            if masks:
                assert np.sum(masks, axis=0).max() == 1, f"{image_id}: overlapping masks"

    check_submission(run_notebook(tmp_path / "working", "tiny"))
    # No carried wheel fits torch 2.9.1: the first run built detectron2 from the source.
    assert f"no carried wheel matches this image's torch {IMAGE_TORCH}" in outputs[0]
    assert "detectron2 built in" in outputs[0]
    assert "Building wheel for detectron2" in outputs[0]  # the build's own output is shown
    # Second run in the same "session": the bundled ensemble (installation is a no-op now).
    check_submission(run_notebook(tmp_path / "working2", "auto"))
    resolved = yaml.safe_load((tmp_path / "working2" / "ensemble.yaml").read_text())
    assert resolved["models"][0]["model_dir"] == str(bundle / "models" / "tiny")
    assert (tmp_path / "working2" / "nucdet_predictions" / "ensemble" / "submission.csv").is_file()

    assert "is installed already: built for this torch" in outputs[1]
    # nucdet and detectron2 were installed into the venv, detectron2 built for ITS torch.
    version = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('detectron2'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version.endswith(f".torch{IMAGE_TORCH}") and d2["commit"][:12] in version, version
    res = subprocess.run(
        [
            str(py),
            "-c",
            "import nucdet, detectron2; print(nucdet.__file__); print(detectron2.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    for line in res.stdout.split():
        assert line.startswith(str(site)), line
