"""Kaggle bundle pieces that run in seconds: dependency closure, wheels repacked from the
installed files and the offline nucdet wheel (both installed back with pip --no-index),
ensemble path rewriting, the bundle layout and the notebook's parameters cell.
The full bundle + notebook run is test_kaggle_bundle_notebook.py (slow)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from nucdet.tools import kaggle_bundle as kb


def pip_install_target(wheel: Path, target: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )


def test_closure_pins_installed_versions_and_skips_the_torch_family():
    installed = kb.installed_distributions()
    d2 = kb.distribution_of("detectron2")
    pins = kb.requirement_closure(
        [("nucdet", md.requires("nucdet") or []), ("detectron2", [d2])], installed=installed
    )
    for name in (
        d2,
        "fvcore",
        "iopath",
        "yacs",
        "omegaconf",
        "hydra-core",
        "antlr4-python3-runtime",
        "pycocotools",
        "ensemble-boxes",
        "numpy",
    ):
        assert pins[name] == installed[name].version, name
    assert "torch" not in pins and "torchvision" not in pins
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]
    # Requirements behind an extra that nobody asked for are not followed.
    assert "fairscale" not in pins and "timm" not in pins
    with pytest.raises(LookupError, match="not installed"):
        kb.requirement_closure([("x", ["surely-not-installed-pkg"])], installed=installed)
    with pytest.raises(LookupError, match="is installed"):
        kb.requirement_closure([("x", ["numpy>=99"])], installed=installed)


@pytest.mark.parametrize("name", ["tabulate", "pycocotools"])
def test_repacked_wheel_reinstalls_the_same_files(tmp_path, name):
    dist = kb.installed_distributions()[name]
    wheel = kb.repack_installed(dist, tmp_path)
    assert kb.parse_wheel_name(wheel.name) == (name, dist.version)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert not [n for n in names if n.endswith(".pyc") or n.endswith("/INSTALLER")]
    assert len(record.splitlines()) == len(names)
    target = tmp_path / "site"
    pip_install_target(wheel, target)  # pip checks every RECORD hash while installing
    for f in dist.files:
        rel = str(f)
        if rel.startswith("..") or "__pycache__" in rel or ".dist-info/" in rel:
            continue
        assert (target / rel).read_bytes() == Path(dist.locate_file(f)).read_bytes(), rel


def test_offline_nucdet_wheel_matches_the_source(tmp_path):
    wheel = kb.write_pure_wheel(REPO, tmp_path)
    assert wheel.name == "nucdet-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        meta = z.read("nucdet-0.1.0.dist-info/METADATA").decode()
        names = set(z.namelist())
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "nucdet").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= names
    project = kb._read_pyproject(REPO)["project"]
    requires = [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist")]
    assert requires == project["dependencies"]
    target = tmp_path / "site"
    pip_install_target(wheel, target)
    res = subprocess.run(
        [sys.executable, "-c", "import nucdet.io.rle as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert res.stdout.strip().startswith(str(target))


def test_rewrite_ensemble_points_models_into_the_bundle(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "config.yaml").write_text("MODEL: {}\n")
        (tmp_path / "out" / name / "model_final.pth").write_bytes(b"")
    (tmp_path / "ids.txt").write_text("a\n")
    data = {
        "models": [
            {"model_dir": "out/a", "weight": 2.0},
            {
                "config": "out/b/config.yaml",
                "weights": "out/b/model_final.pth",
                "route": {"ids_file": "ids.txt"},
            },
        ],
        "fusion": {"method": "wbf", "iou_thr": 0.5},
        "note": "not/a/path",
    }
    given = {(tmp_path / "out" / "a").resolve(): "r50"}
    new, models, weights, files = kb.rewrite_ensemble(data, [tmp_path], given)
    assert new["models"][0] == {"model_dir": "{bundle}/models/r50", "weight": 2.0}
    assert new["models"][1] == {
        "config": "{bundle}/models/b/config.yaml",
        "weights": "{bundle}/models/b/model_final.pth",
        "route": {"ids_file": "{bundle}/ensembles/files/ids.txt"},
    }
    assert new["fusion"] == data["fusion"] and new["note"] == "not/a/path"
    b = (tmp_path / "out" / "b").resolve()
    assert weights == {b: b / "model_final.pth"}
    assert files == {(tmp_path / "ids.txt").resolve(): "ensembles/files/ids.txt"}
    assert models == {
        (tmp_path / "out" / "a").resolve(): "r50",
        (tmp_path / "out" / "b").resolve(): "b",
    }


def test_bundle_layout_manifest_and_stripped_weights(tmp_path):
    import torch

    model = tmp_path / "runs" / "tiny"
    model.mkdir(parents=True)
    (model / "config.yaml").write_text(
        "MODEL:\n  DEVICE: cpu\nINPUT:\n  NORMALIZATION: detectron2\n"
    )
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(
        {"model": state, "optimizer": {"big": torch.zeros(1000)}, "iteration": 41},
        model / "model_final.pth",
    )
    torch.save({"model": {"w": torch.zeros(2, 3)}, "iteration": 20}, model / "model_best.pth")
    out = tmp_path / "bundle"
    # exclude="*": no dependency wheels, so this stays fast; the slow test does them all.
    manifest_path = kb.main(
        ["--model-dir", str(model), "--output", str(out), "--offline", "--exclude", "*"]
    )
    manifest = json.loads(manifest_path.read_text())
    assert manifest["models"] == [
        {
            "name": "tiny",
            "dir": "models/tiny",
            "weights": "model_best.pth",
            "source_weights": str(model / "model_best.pth"),
            "iteration": 20,
        }
    ]
    ckpt = torch.load(out / "models" / "tiny" / "model_best.pth")
    assert set(ckpt) == {"model", "iteration"}  # no optimizer state
    assert torch.equal(ckpt["model"]["w"], torch.zeros(2, 3))
    assert (out / "models" / "tiny" / "config.yaml").read_text() == (
        model / "config.yaml"
    ).read_text()
    assert [w["name"] for w in manifest["wheels"]] == ["nucdet"]
    assert (out / "wheels" / manifest["wheels"][0]["file"]).is_file()
    assert manifest["install"][0] == "nucdet==0.1.0"
    assert (
        manifest["install"][1]
        == f"{kb.distribution_of('detectron2')}=={md.version(kb.distribution_of('detectron2'))}"
    )
    assert manifest["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (out / "scripts" / "infer.py").read_text() == (REPO / "infer.py").read_text()
    assert (out / "kaggle_submission.ipynb").is_file()
    assert "{model_dir}" in manifest["commands"]["model"]
    with pytest.raises(FileExistsError, match="--force"):
        kb.main(["--model-dir", str(model), "--output", str(out), "--offline", "--exclude", "*"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")], "temp left"


def test_notebook_parameters_come_first_and_cells_compile():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "kaggle_submission.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    params = {}
    exec(compile(first.source, "parameters", "exec"), {}, params)
    assert params["BUNDLE_DIR"].startswith("/kaggle/input/")
    assert params["TEST_DIR"] == "/kaggle/input/sartorius-cell-instance-segmentation/test"
    assert params["WORK_DIR"] == "/kaggle/working"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for src in code:
        ast.parse(src)
    install = next(src for src in code if "pip" in src)
    assert '"--no-index"' in install and "--find-links" in install
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_ensemble_bundle_rewrites_paths_and_inlines_dataset_normalisation(tmp_path):
    import torch
    import yaml
    from conftest import tiny_cfg

    # A minimal source tree: the bundle needs the package, pyproject and both entry points.
    src = tmp_path / "src"
    (src / "nucdet").mkdir(parents=True)
    (src / "nucdet" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text(
        '[project]\nname = "nucdet"\nversion = "9.9"\ndependencies = []\n'
    )
    for script in ("infer.py", "ensemble_infer.py"):
        (src / script).write_text(f"# {script}\n")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": [10.0, 20.0, 30.0], "std": [1.0, 2.0, 3.0]}))
    runs = tmp_path / "runs"
    for name, norm in (("r18", "dataset"), ("r50", "detectron2")):
        d = runs / name
        d.mkdir(parents=True)
        cfg = tiny_cfg("INPUT.NORMALIZATION", norm, "INPUT.DATASET_STATS", str(stats))
        (d / "config.yaml").write_text(cfg.dump())
        for ckpt, it in (("model_0000099.pth", 99), ("model_final.pth", 199)):
            torch.save({"model": {"w": torch.full((2,), float(it))}, "iteration": it}, d / ckpt)
    ens = tmp_path / "ens.yaml"
    ens.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"dir": str(runs / "r18"), "weights": str(runs / "r18" / "model_0000099.pth")},
                    {"dir": "runs/r50", "route": {"ids_file": "ids.txt"}},
                ],
                "tta": ["hflip"],
                "fusion": {"method": "wbf"},
            }
        )
    )
    (tmp_path / "ids.txt").write_text("x\n")
    out = tmp_path / "bundle"
    manifest = json.loads(
        kb.main(
            [
                "--ensemble",
                str(ens),
                "--output",
                str(out),
                "--offline",
                "--exclude",
                "*",
                "--source",
                str(src),
                "--notebook",
                str(REPO / "notebooks" / "kaggle_submission.ipynb"),
            ]
        ).read_text()
    )
    assert manifest["ensemble"] == "ensembles/ens.yaml"
    assert [(m["name"], m["weights"], m["iteration"]) for m in manifest["models"]] == [
        ("r18", "model_final.pth", 99),
        ("r50", "model_final.pth", 199),
    ]
    bundled = yaml.safe_load((out / "ensembles" / "ens.yaml").read_text())
    assert bundled == {
        "models": [
            {"dir": "{bundle}/models/r18", "weights": "{bundle}/models/r18/model_final.pth"},
            {
                "dir": "{bundle}/models/r50",
                "route": {"ids_file": "{bundle}/ensembles/files/ids.txt"},
            },
        ],
        "tta": ["hflip"],
        "fusion": {"method": "wbf"},
    }
    assert (out / "ensembles" / "files" / "ids.txt").read_text() == "x\n"
    assert sorted(p.name for p in (out / "scripts").iterdir()) == ["ensemble_infer.py", "infer.py"]
    assert manifest["install"][0] == "nucdet==9.9"
    # The r18 config no longer needs stats.json: its mean/std are in the config itself.
    from nucdet.engine.defaults import build_cfg

    r18 = build_cfg(out / "models" / "r18" / "config.yaml")
    assert r18.INPUT.NORMALIZATION == "detectron2" and r18.INPUT.DATASET_STATS == ""
    assert list(r18.MODEL.PIXEL_MEAN) == [10.0, 20.0, 30.0]
    assert list(r18.MODEL.PIXEL_STD) == [1.0, 2.0, 3.0]
    assert (out / "models" / "r50" / "config.yaml").read_text() == (
        runs / "r50" / "config.yaml"
    ).read_text()
