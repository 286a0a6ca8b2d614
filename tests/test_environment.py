"""The environment is the stack nucdet pins: Python 3.11/3.12, torch and torchvision of
requirements-torch.txt, detectron2 built from the pinned commit against that torch; and the
set-up scripts fail with a clear message where they cannot do their job."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO
from packaging.specifiers import SpecifierSet

from nucdet.__about__ import (
    DETECTRON2_COMMIT,
    TORCH,
    TORCHVISION,
    __version__,
    parse_detectron2_version,
    torch_release,
)


def test_pins_agree_across_files():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    spec = SpecifierSet(project["requires-python"])
    assert "3.11.7" in spec and "3.12.1" in spec and "3.10.13" not in spec
    pins = [ln.strip() for ln in (REPO / "requirements-torch.txt").read_text().splitlines()]
    assert f"torch=={TORCH}" in pins and f"torchvision=={TORCHVISION}" in pins
    assert len(DETECTRON2_COMMIT) == 40 and int(DETECTRON2_COMMIT, 16) >= 0
    lock = (REPO / "requirements-lock.txt").read_text()
    assert "\ntorch==" not in lock and "detectron2" not in lock.split("# from source")[-1]


def test_parse_detectron2_version():
    assert parse_detectron2_version("0.6+git02b5c4e295e9.torch2.14.1") == {
        "base": "0.6",
        "commit": "02b5c4e295e9",
        "torch": "2.14.1",
    }
    assert parse_detectron2_version("0.6") is None
    assert parse_detectron2_version("0.7.2") is None
    assert torch_release("2.14.1+cu130") == "2.14.1" and torch_release("2.9.1") == "2.9.1"


def test_installed_stack_is_the_pinned_one():
    """torch and torchvision of requirements-torch.txt; detectron2 built by the set-up from
    the pinned commit against this torch (unless the set-up was told DETECTRON2=...)."""
    import torch
    import torchvision
    from detectron2 import _C  # noqa: F401  (the compiled ops load against this torch)

    assert sys.version_info[:2] in ((3, 11), (3, 12))
    origin_file = Path(sys.prefix) / ".nucdet-detectron2"
    origin = origin_file.read_text().strip() if origin_file.is_file() else "source"
    if origin != "source":
        return  # the user brought their own detectron2 and torch: nothing pinned to check
    assert torch_release(torch.__version__) == TORCH
    assert torch_release(torchvision.__version__) == TORCHVISION
    build = parse_detectron2_version(md.version("detectron2"))
    assert build is not None, f"detectron2 {md.version('detectron2')} was not built by the set-up"
    assert DETECTRON2_COMMIT.startswith(build["commit"])
    assert build["torch"] == TORCH


def run_script(args, env_extra, path=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUCDET_"))}
    env.update(env_extra)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_find_python_says_what_it_needs():
    res = run_script(["scripts/find_python.sh"], {"NUCDET_PYTHON": "3.10"})
    assert res.returncode == 1 and "supports Python 3.11 (default) and 3.12" in res.stderr
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    other = "3.12" if own == "3.11" else "3.11"
    res = run_script(["scripts/find_python.sh"], {"NUCDET_PYTHON": other, "PYTHON": sys.executable})
    assert res.returncode == 1
    assert f"is not a Python {other} interpreter (it is: Python {own}" in res.stderr
    res = run_script(["scripts/find_python.sh"], {"NUCDET_PYTHON": own, "PYTHON": sys.executable})
    assert res.returncode == 0
    assert Path(res.stdout.strip()).resolve() == Path(sys.executable).resolve()


def test_build_detectron2_without_source_names_both_ways(tmp_path):
    res = run_script(
        ["scripts/build_detectron2.sh"],
        {
            "PY": sys.executable,
            "NUCDET_WHEEL_CACHE": str(tmp_path / "cache"),  # empty: nothing cached
            "NUCDET_VENDOR": str(tmp_path / "no-vendor"),
            "D2_REPO_URL": f"file://{tmp_path}/missing/detectron2.git",
        },
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "cannot get the detectron2 source" in res.stderr
    assert "cannot be reached" in res.stderr and "detectron2-02b5c4e295e9.tar.gz" in res.stderr
    assert str(tmp_path / "no-vendor") in res.stderr


def test_build_detectron2_without_a_compiler_says_so(tmp_path):
    """PATH with every tool of this machine but the C++ compilers."""
    fake = tmp_path / "bin"
    fake.mkdir()
    compilers = {"c++", "g++", "cc", "gcc", "clang", "clang++"}
    for d in os.environ["PATH"].split(os.pathsep):
        if not Path(d).is_dir():
            continue
        for exe in Path(d).iterdir():
            name = exe.name
            is_cxx = name in compilers or name.endswith(("-g++", "-c++")) or "g++-" in name
            if not is_cxx and not (fake / name).exists() and os.access(exe, os.X_OK):
                (fake / name).symlink_to(exe)
    res = run_script(
        ["scripts/build_detectron2.sh"],
        {"PY": sys.executable, "NUCDET_WHEEL_CACHE": str(tmp_path / "cache")},
        path=str(fake),
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no C++ compiler found" in res.stderr and "DETECTRON2=" in res.stderr


def test_dependencies_are_declared_exactly():
    """requirements.txt lists pyproject.toml's dependencies; every third-party module nucdet
    imports comes from one of them (or from the stack the set-up installs: torch,
    torchvision, detectron2); ensemble-boxes, which nucdet.inference.fusion is checked
    bit-identical against, is pinned to its version in requirements-lock.txt."""
    import ast

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(d) for d in project["dependencies"]]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    listed = [Requirement(ln.split("#")[0]) for ln in lines if ln.split("#")[0].strip()]
    assert listed == declared
    names = {canonicalize_name(r.name) for r in declared} | {"torch", "torchvision", "detectron2"}
    modules = set()
    for path in (REPO / "nucdet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = sorted(m for m in modules - {"nucdet"} if m not in sys.stdlib_module_names)
    providers = md.packages_distributions()
    undeclared = {
        m: providers.get(m)
        for m in third_party
        if not {canonicalize_name(d) for d in providers.get(m, [])} & names
    }
    assert not undeclared, f"imported by nucdet but not declared: {undeclared}"
    (boxes,) = [r for r in declared if canonicalize_name(r.name) == "ensemble-boxes"]
    lock = (REPO / "requirements-lock.txt").read_text().splitlines()
    assert [str(boxes.specifier)] == [
        "==" + ln.split("==")[1] for ln in lock if ln.lower().startswith("ensemble-boxes==")
    ]
