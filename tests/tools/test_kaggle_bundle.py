"""Kaggle bundle pieces that run in seconds: dependency closure for a target Python, which
wheel tags install on it, wheels repacked from the installed files and the nucdet wheel
built offline (both installed back with pip --no-index), the detectron2 source check,
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
from packaging.requirements import Requirement
from packaging.tags import Tag

from nucdet.__about__ import DETECTRON2_COMMIT, parse_detectron2_version
from nucdet.tools import bundle_models as bm
from nucdet.tools import bundle_wheels as bw
from nucdet.tools import kaggle_bundle as kb


def fake_detectron2_source(path: Path, commit: str = DETECTRON2_COMMIT) -> Path:
    """A tarball that says, like ``git archive``, which commit it holds (pax comment)."""
    import io
    import tarfile

    pax = {"comment": commit}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers=pax) as t:
        data = b"# setup.py\n"
        info = tarfile.TarInfo("detectron2/setup.py")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


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
    installed = bw.installed_distributions()
    d2 = bw.distribution_of("detectron2")
    pins = bw.requirement_closure(
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
        bw.requirement_closure([("x", ["surely-not-installed-pkg"])], installed=installed)
    with pytest.raises(LookupError, match="is installed"):
        bw.requirement_closure([("x", ["numpy>=99"])], installed=installed)
    # Markers are evaluated for the TARGET Python, not this one.
    req = ['tabulate; python_version < "3.12"']
    assert bw.requirement_closure([("x", req)], installed=installed, python=(3, 11)) == {
        "tabulate": installed["tabulate"].version
    }
    assert bw.requirement_closure([("x", req)], installed=installed, python=(3, 12)) == {}


def test_target_tags_decide_which_wheels_install():
    plats = bw.manylinux_platforms((2, 35))
    assert plats[0] == "manylinux_2_35_x86_64" and "manylinux2014_x86_64" in plats
    assert "manylinux_2_36_x86_64" not in plats and "manylinux_2_17_x86_64" in plats
    t311, t312 = bw.target_tags((3, 11), plats), bw.target_tags((3, 12), plats)
    pure = "tabulate-0.9.0-py3-none-any.whl"
    cp311 = "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    abi3 = "grpcio-1.0-cp38-abi3-manylinux_2_17_x86_64.whl"
    too_new = "x-1.0-cp311-cp311-manylinux_2_39_x86_64.whl"
    local = "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    assert bw.wheel_fits(pure, t311) and bw.wheel_fits(pure, t312)
    assert bw.wheel_fits(cp311, t311) and not bw.wheel_fits(cp311, t312)
    assert bw.wheel_fits(abi3, t311) and bw.wheel_fits(abi3, t312)
    assert not bw.wheel_fits(too_new, t311) and not bw.wheel_fits(local, t311)
    assert bw.is_pure(pure) and not bw.is_pure(cp311)
    assert Tag("py3", "none", "any") in t311
    with pytest.raises(ValueError, match="--python-version '3': give MAJOR.MINOR"):
        bw.parse_python_version("3")
    with pytest.raises(ValueError, match="--glibc '2': give MAJOR.MINOR"):
        kb.main(["--model-dir", "x", "--output", "y", "--glibc", "2"])


def test_offline_wheels_for_another_python_only_where_they_fit(tmp_path):
    """Offline, a pure distribution is repacked for any target; a compiled one only for
    this Python; what does not fit is named in the error."""
    installed = bw.installed_distributions()
    plats = bw.manylinux_platforms()
    own = (sys.version_info.major, sys.version_info.minor)
    other = (3, 12) if own == (3, 11) else (3, 11)
    pins = {"tabulate": installed["tabulate"].version}
    got = bw.collect_wheels(pins, tmp_path / "a", other, plats, offline=True)
    assert [(w["name"], w["source"]) for w in got] == [("tabulate", "installed")]
    assert bw.is_pure(got[0]["file"])
    pins["pycocotools"] = installed["pycocotools"].version
    with pytest.raises(LookupError, match=rf"Python 3\.{other[1]}.*pycocotools=="):
        bw.collect_wheels(pins, tmp_path / "b", other, plats, offline=True)
    got = bw.collect_wheels(pins, tmp_path / "c", own, plats, offline=True)
    assert {w["name"] for w in got} == {"tabulate", "pycocotools"}


def test_detectron2_source_is_checked_against_the_pinned_commit(tmp_path):
    good = fake_detectron2_source(tmp_path / f"detectron2-{DETECTRON2_COMMIT[:12]}.tar.gz")
    assert bw.tar_commit(good) == DETECTRON2_COMMIT
    assert bw.detectron2_source(good, [], tmp_path / "cache") == good
    assert bw.detectron2_source(None, [tmp_path], tmp_path / "cache") == good  # found by name
    bad = fake_detectron2_source(tmp_path / "other.tar.gz", commit="0" * 40)
    with pytest.raises(ValueError, match="not of the pinned detectron2 commit"):
        bw.detectron2_source(bad, [], tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="no such file"):
        bw.detectron2_source(tmp_path / "missing.tar.gz", [], tmp_path / "cache")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="junk.tar.gz: not a readable tarball"):
        bw.detectron2_source(tmp_path / "junk.tar.gz", [], tmp_path / "cache")


@pytest.mark.parametrize("name", ["tabulate", "pycocotools"])
def test_repacked_wheel_reinstalls_the_same_files(tmp_path, name):
    dist = bw.installed_distributions()[name]
    wheel = bw.repack_installed(dist, tmp_path)
    assert bw.parse_wheel_name(wheel.name)[:2] == (name, dist.version)
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


def test_nucdet_wheel_is_built_offline_from_the_source(tmp_path):
    import tomllib

    wheel = bw.build_nucdet_wheel(REPO, tmp_path)  # pip wheel --no-index --no-build-isolation
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = project["version"]
    assert wheel.name == f"nucdet-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"nucdet-{version}.dist-info/METADATA").decode()
        names = set(z.namelist())
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "nucdet").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= names
    # The bundled sample is package data, and nucdet-train a console script of the wheel
    # (tests/test_packaging.py runs them installed, outside the checkout: slow).
    sample = REPO / "nucdet" / "data" / "dsb2018_sample"
    assert len(list(sample.rglob("*.png"))) > 900
    assert {p.relative_to(REPO).as_posix() for p in sample.rglob("*") if p.is_file()} <= names
    with zipfile.ZipFile(wheel) as z:
        scripts = z.read(f"nucdet-{version}.dist-info/entry_points.txt").decode()
    assert "nucdet-train = nucdet.tools.train_net:cli" in scripts.splitlines()
    requires = [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist")]
    assert [Requirement(r) for r in requires] == [Requirement(d) for d in project["dependencies"]]
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
    new, models, weights, files = bm.rewrite_ensemble(data, [tmp_path], given)
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
    src = fake_detectron2_source(tmp_path / "d2.tar.gz")
    opts = ["--offline", "--exclude", "*", "--detectron2-source", str(src), "--source", str(REPO)]
    manifest_path = kb.main(["--model-dir", str(model), "--output", str(out), *opts])
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
    import nucdet

    assert manifest["install"] == [f"nucdet=={nucdet.__version__}"]
    assert manifest["python"] == "3.11"  # the default target, whatever builds the bundle
    # detectron2: the pinned source always; this machine's wheel when it is a build of the
    # pinned commit (the set-up's), labelled with the torch it was built against.
    d2 = manifest["detectron2"]
    assert d2["commit"] == DETECTRON2_COMMIT
    assert (out / d2["source"]).read_bytes() == src.read_bytes()
    build = parse_detectron2_version(md.version("detectron2"))
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    if build is not None and DETECTRON2_COMMIT.startswith(build["commit"]) and own == "3.11":
        assert [(w["torch"], w["python"]) for w in d2["wheels"]] == [(build["torch"], own)]
        assert (out / d2["wheels"][0]["file"]).is_file()
    else:
        assert d2["wheels"] == []
    assert (out / "scripts" / "infer.py").read_text() == (REPO / "infer.py").read_text()
    assert (out / "kaggle_submission.ipynb").is_file()
    assert "{model_dir}" in manifest["commands"]["model"]
    with pytest.raises(FileExistsError, match="--force"):
        kb.main(["--model-dir", str(model), "--output", str(out), *opts])
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
                "--detectron2-source",
                str(fake_detectron2_source(tmp_path / "d2.tar.gz")),
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
    from nucdet.config import build_cfg

    r18 = build_cfg(out / "models" / "r18" / "config.yaml")
    assert r18.INPUT.NORMALIZATION == "detectron2" and r18.INPUT.DATASET_STATS == ""
    assert list(r18.MODEL.PIXEL_MEAN) == [10.0, 20.0, 30.0]
    assert list(r18.MODEL.PIXEL_STD) == [1.0, 2.0, 3.0]
    assert (out / "models" / "r50" / "config.yaml").read_text() == (
        runs / "r50" / "config.yaml"
    ).read_text()
