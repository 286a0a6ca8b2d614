"""nucdet runs installed from its wheel, away from the repository: the wheel is
built (``pip wheel --no-deps --no-build-isolation``, ``nucdet.tools.bundle_wheels``) and
installed with ``pip install --target`` into a temporary folder; a fresh interpreter started
in another temporary folder with ``-I -S`` (no site, so neither the venv's editable nucdet
nor the checkout is importable) and an explicit sys.path (that folder, then the venv's
site-packages for detectron2 and the other dependencies) imports nucdet from there, finds
the bundled sample data, registers and loads it, and resolves the sweep's default training
command and the ``nucdet-train`` console script to the installed code.

That test is slow (~25 s of CPU: the wheel with the sample, detectron2's import, the
sample's conversion; minutes on a busy machine): ``make test-slow``. Fast: the one
training command behind train_net.py, ``nucdet-train`` and the sweep (here), and the
wheel's content (tests/tools/test_kaggle_bundle.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE_ROOT

from nucdet.tools.bundle_wheels import build_nucdet_wheel

PROBE = r"""
import contextlib, importlib.metadata as md, importlib.util, io, json, sys
from pathlib import Path
target, *deps = sys.argv[1:]
sys.path[:0] = [target]
sys.path += deps

import nucdet
from detectron2.data import DatasetCatalog
from nucdet.data.register import SAMPLE_ROOT, register_all
from nucdet.tools.sweep import TRAIN_MODULE, Run, SweepSettings, train_command

register_all()
val = DatasetCatalog.get("dsb2018_sample_val")
cmd = train_command(Run(0, "r", "c.yaml", ()), SweepSettings(output=Path("o")), False)
(ep,) = md.entry_points(group="console_scripts", name="nucdet-train")
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    try:
        ep.load()(["--help"])
    except SystemExit as e:
        code = e.code
print(json.dumps({
    "nucdet": nucdet.__file__,
    "sample_root": str(SAMPLE_ROOT),
    "val_files": sorted(d["file_name"] for d in val),
    "val_annotations": sum(len(d["annotations"]) for d in val),
    "command": cmd,
    "train_module": importlib.util.find_spec(TRAIN_MODULE).origin,
    "entry_point": ep.value,
    "entry_point_dist": str(md.distribution("nucdet").locate_file("")),
    "help_exit": code,
    "help": help_text.getvalue(),
}))
"""


def test_one_training_command_for_the_script_the_console_script_and_the_sweep():
    import importlib.util

    import train_net
    from nucdet.tools import train_net as module
    from nucdet.tools.sweep import TRAIN_MODULE, Run, SweepSettings, train_command

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nucdet-train": f"{TRAIN_MODULE}:cli"}
    assert importlib.util.find_spec(TRAIN_MODULE).origin == module.__file__
    assert Path(train_net.__file__) == REPO / "train_net.py"  # the thin wrapper
    assert (train_net.cli, train_net.main, train_net.setup) == (
        module.cli,
        module.main,
        module.setup,
    )
    run = Run(0, "r", "c.yaml", (("SOLVER.MAX_ITER", "3"),))
    cmd = train_command(run, SweepSettings(output=Path("/o"), python="py"), resume=True)
    assert cmd == [
        "py", "-m", TRAIN_MODULE, "--config-file", "c.yaml", "--resume",
        "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", "/o/runs/r",
    ]  # fmt: skip
    script = SweepSettings(output=Path("/o"), python="py", train_script="t.py")
    assert train_command(run, script, resume=False)[:3] == ["py", "t.py", "--config-file"]


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(tmp_path):
    wheel = build_nucdet_wheel(REPO, tmp_path)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(wheel)],
        check=True,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(target), *deps],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], "NUCDET_CACHE": str(tmp_path)},
        timeout=1200,  # a hang guard: minutes on a busy machine
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])

    installed = target / "nucdet"
    assert Path(got["nucdet"]) == installed / "__init__.py"
    # The sample is package data of the installed copy, with every file of the repository's.
    assert Path(got["sample_root"]) == installed / "data" / "dsb2018_sample"
    ours = sorted(p.relative_to(SAMPLE_ROOT) for p in SAMPLE_ROOT.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(got["sample_root"]) for p in Path(got["sample_root"]).rglob("*"))
    assert ours == [p for p in theirs if (Path(got["sample_root"]) / p).is_file()]
    split = json.loads((SAMPLE_ROOT / "split.json").read_text())
    assert [Path(f).parent.parent.name for f in got["val_files"]] == sorted(split["val"])
    assert all(f.startswith(got["sample_root"] + "/") for f in got["val_files"])
    n_masks = sum(
        len(list((SAMPLE_ROOT / "stage1_train" / i / "masks").iterdir())) for i in split["val"]
    )
    assert got["val_annotations"] == n_masks
    # The sweep's default command is ``python -m`` the module nucdet-train runs, installed.
    assert got["command"][1:3] == ["-m", "nucdet.tools.train_net"]
    assert Path(got["train_module"]) == installed / "tools" / "train_net.py"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert got["entry_point"] == scripts["nucdet-train"] == "nucdet.tools.train_net:cli"
    assert Path(got["entry_point_dist"]) == target
    assert got["help_exit"] == 0 and "--config-file" in got["help"]
    assert (target / "bin" / "nucdet-train").is_file()
