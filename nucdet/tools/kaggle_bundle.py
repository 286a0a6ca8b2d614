"""Offline Kaggle bundle: one folder to upload as a Kaggle dataset for a code competition.

    python -m nucdet.tools.kaggle_bundle --model-dir output/r50 [--model-dir output/x101] \
        [--ensemble configs/ensembles/sartorius_r50_x101_tta.yaml] --output dist/nucdet-bundle \
        [--python-version 3.11] [--wheels-from wheelhouse/] [--offline] [--force]
    make kaggle-bundle BUNDLE_ARGS="--model-dir output/r50 --output dist/nucdet-bundle"

Run it in the nucdet repository (or give ``--source``): the bundle carries the wheel built
from that source tree, its entry points and its notebook. It is made for an image that is
not ours: its Python and its torch are the image's. The folder holds:

- ``wheels/``: the nucdet wheel and every distribution nucdet and detectron2 need, at the
  versions installed here, as wheels for the target Python (``--python-version``, default
  3.11; pure wheels where the registry has them), except the torch family
  (``--exclude``), which the bundle never carries; plus what building detectron2 needs
  (setuptools, wheel, ninja). See ``nucdet.tools.bundle_wheels``.
- ``detectron2/``: the source of the pinned detectron2 commit (``git archive`` tarball,
  ``--detectron2-source`` or found next to the repository / in the cache) and, when the
  detectron2 installed here is a build of that commit for the target Python, its wheel.
  The notebook installs that wheel only when the image's torch is the release it was built
  against (read from the wheel's version, ``0.6+git<commit>.torch<release>``), and otherwise
  builds detectron2 from the carried source against the image's torch.
- ``models/<name>/``: ``config.yaml`` and the weights (best, else final, else last
  checkpoint) stripped to the model state (no optimizer: a third of the size).
- ``ensembles/<name>.yaml``: the ``--ensemble`` YAML with its model paths rewritten to
  ``{bundle}/models/<name>`` (the notebook substitutes the mounted path). Models and
  ensembles: see ``nucdet.tools.bundle_models``.
- ``scripts/``: ``infer.py`` and ``ensemble_infer.py`` (entry points are not in the wheel;
  the notebook runs them as scripts with the installed nucdet).
- ``kaggle_submission.ipynb`` (a copy of the source tree's notebooks/kaggle_submission.ipynb) and
  ``bundle.json``: the manifest the notebook reads (what to install, the models, the
  inference command templates, the target Python, the detectron2 commit and wheels).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nucdet.__about__ import DETECTRON2_COMMIT
from nucdet.io.atomic import atomic_open, atomic_write_json
from nucdet.tools.bundle_models import bundle_model, rewrite_ensemble
from nucdet.tools.bundle_wheels import (
    BUILD_REQUIRES,
    DEFAULT_EXCLUDE,
    DEFAULT_GLIBC,
    build_nucdet_wheel,
    collect_wheels,
    detectron2_source,
    detectron2_wheel,
    installed_distributions,
    manylinux_platforms,
    parse_python_version,
    parse_wheel_name,
    requirement_closure,
)

logger = logging.getLogger(__name__)

# In the nucdet source tree (--source, default the current directory): the notebook and the
# entry points the bundle carries, which are the repository's, not the package's.
NOTEBOOK = Path("notebooks") / "kaggle_submission.ipynb"
SCRIPTS = ("infer.py", "ensemble_infer.py")
MANIFEST = "bundle.json"
# The set-up's detectron2 wheel cache (scripts/build_detectron2.sh) and source cache.
WHEEL_CACHE = Path(
    os.environ.get("NUCDET_WHEEL_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nucdet" / "wheels"
)


# ---- the bundle --------------------------------------------------------------------------------


def _git_commit(src: Path) -> str | None:
    if not (src / ".git").exists():
        return None
    res = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return res.stdout.strip() if res.returncode == 0 else None


def _unique_names(dirs: Sequence[Path]) -> dict[Path, str]:
    names: dict[Path, str] = {}
    for d in dirs:
        name, k = d.name, 1
        while name in names.values():
            k += 1
            name = f"{d.name}_{k}"
        names[d] = name
    return names


def commands() -> dict[str, list[str]]:
    """Inference command templates the notebook fills in ({python}, {bundle}, {input},
    {output}, {device}, and {model_dir} or {ensemble}); it appends its EXTRA_OPTS."""
    common = ["--input", "{input}", "--output", "{output}", "--format", "kaggle", "--overlays", "0"]
    # Trailing KEY VALUE pairs override the config of every model: the Kaggle GPU, also
    # for a model that was trained (and so configured) on a CPU.
    device = ["MODEL.DEVICE", "{device}"]
    return {
        "model": [
            "{python}",
            "{bundle}/scripts/infer.py",
            "--model-dir",
            "{model_dir}",
            *common,
            *device,
        ],
        "ensemble": [
            "{python}",
            "{bundle}/scripts/ensemble_infer.py",
            "--ensemble",
            "{ensemble}",
            *common,
            *device,
        ],
    }


def vendor_dirs(source: Path) -> list[Path]:
    """Where a detectron2 source tarball may lie: ``$NUCDET_VENDOR``, then the ``shared/vendor``
    folder beside the source tree (the developers' machines)."""
    dirs = [Path(os.environ["NUCDET_VENDOR"])] if os.environ.get("NUCDET_VENDOR") else []
    return [*dirs, source.parent / "shared" / "vendor"]


def build_bundle(
    model_dirs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    ensemble: str | os.PathLike | None = None,
    wheels_from: Sequence[str | os.PathLike] = (),
    offline: bool = False,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    source: str | os.PathLike = ".",
    notebook: str | os.PathLike | None = None,
    force: bool = False,
    python_version: str = "3.11",
    glibc: tuple[int, int] = DEFAULT_GLIBC,
    detectron2_src: str | os.PathLike | None = None,
) -> Path:
    """Build the bundle folder (see the module docstring); returns the manifest path.

    ``source`` is the nucdet source tree (pyproject.toml, nucdet/, the entry points);
    ``notebook`` defaults to its ``notebooks/kaggle_submission.ipynb``. The folder is
    assembled under a temporary name next to ``output`` and renamed at the end, so an
    interrupted build never leaves a half bundle under the final name.
    """
    output, source = Path(output).resolve(), Path(source).resolve()
    notebook = source / NOTEBOOK if notebook is None else Path(notebook)
    python = parse_python_version(python_version)
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists (use --force to replace it)")
    if not model_dirs and ensemble is None:
        raise ValueError("nothing to bundle: give --model-dir and/or --ensemble")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        manifest = _assemble(
            tmp,
            [Path(d).resolve() for d in model_dirs],
            ensemble,
            [Path(w) for w in wheels_from],
            offline,
            exclude,
            source,
            notebook,
            python,
            manylinux_platforms(glibc),
            detectron2_src,
        )
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "bundle: %s (%d wheels, detectron2 wheels for torch %s, models %s)",
        output,
        len(manifest["wheels"]),
        [w["torch"] for w in manifest["detectron2"]["wheels"]] or "none (source only)",
        ", ".join(m["name"] for m in manifest["models"]),
    )
    return output / MANIFEST


def _assemble(
    out: Path,
    model_dirs: list[Path],
    ensemble: str | os.PathLike | None,
    wheels_from: list[Path],
    offline: bool,
    exclude: Sequence[str],
    source: Path,
    notebook: Path,
    python: tuple[int, int],
    platforms: list[str],
    detectron2_src: str | os.PathLike | None,
) -> dict[str, Any]:
    for d in model_dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"--model-dir {d}: not a directory")
    models = _unique_names(model_dirs)
    ensemble_weights: dict[Path, Path] = {}
    manifest: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if ensemble is not None:
        ensemble = Path(ensemble)
        data = yaml.safe_load(ensemble.read_text())
        rewritten, models, ensemble_weights, files = rewrite_ensemble(
            data, [Path.cwd(), ensemble.parent.resolve(), source], models
        )
        (out / "ensembles").mkdir()
        for src_file, rel in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_file, out / rel)
        with atomic_open(out / "ensembles" / ensemble.name, "w") as f:
            yaml.safe_dump(rewritten, f, sort_keys=False)
        manifest["ensemble"] = f"ensembles/{ensemble.name}"
    manifest["models"] = []
    for d, name in models.items():
        info = bundle_model(d, out / "models" / name, weights=ensemble_weights.get(d))
        manifest["models"].append({"name": name, "dir": f"models/{name}", **info})

    # detectron2: the pinned source always, this machine's wheel when it fits the target.
    d2_dir = out / "detectron2"
    d2_dir.mkdir()
    tarball = detectron2_source(detectron2_src, vendor_dirs(source), WHEEL_CACHE.parent / "src")
    shutil.copy2(tarball, d2_dir / tarball.name)
    installed = installed_distributions()
    if "detectron2" not in installed:
        raise LookupError("detectron2 is not installed here: its requirements cannot be listed")
    d2_wheel = detectron2_wheel(installed, WHEEL_CACHE, d2_dir, python)

    wheels = out / "wheels"
    wheels.mkdir()
    nucdet_whl = build_nucdet_wheel(source, wheels)
    nucdet_name, nucdet_version, _ = parse_wheel_name(nucdet_whl.name)
    with zipfile.ZipFile(nucdet_whl) as z:
        meta = z.read(f"nucdet-{nucdet_version}.dist-info/METADATA").decode()
    nucdet_requires = [
        ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")
    ]
    d2_requires = installed["detectron2"].requires or []
    pins = requirement_closure(
        [("nucdet", nucdet_requires), ("detectron2", d2_requires), ("build", BUILD_REQUIRES)],
        exclude=exclude,
        installed=installed,
        python=python,
    )
    pins.pop(nucdet_name, None)
    manifest["wheels"] = [
        {
            "name": nucdet_name,
            "version": nucdet_version,
            "file": nucdet_whl.name,
            "source": "built",
        },
        *collect_wheels(pins, wheels, python, platforms, wheels_from, offline, installed),
    ]
    manifest["install"] = [f"{nucdet_name}=={nucdet_version}"]
    manifest["excluded"] = list(exclude)
    manifest["detectron2"] = {
        "commit": DETECTRON2_COMMIT,
        "source": f"detectron2/{tarball.name}",
        "wheels": [{**d2_wheel, "file": f"detectron2/{d2_wheel['file']}"}] if d2_wheel else [],
        "build_requires": [f"{n}=={pins[n]}" for n in map(str, BUILD_REQUIRES) if n in pins],
    }

    (out / "scripts").mkdir()
    manifest["scripts"] = []
    for script in SCRIPTS:
        if (source / script).is_file():
            shutil.copy2(source / script, out / "scripts" / script)
            manifest["scripts"].append(f"scripts/{script}")
        elif script == "infer.py" or ensemble is not None:
            raise FileNotFoundError(f"{source / script} is needed by the bundle")
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    shutil.copy2(notebook, out / notebook.name)
    manifest.update(
        commands=commands(),
        python=f"{python[0]}.{python[1]}",
        platforms=platforms,
        built_with={
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "torch": installed["torch"].version if "torch" in installed else None,
            "torchvision": installed["torchvision"].version if "torchvision" in installed else None,
        },
        nucdet_commit=_git_commit(source),
    )
    atomic_write_json(out / MANIFEST, manifest, indent=1)
    return manifest


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m nucdet.tools.kaggle_bundle",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument(
        "--model-dir",
        action="append",
        default=[],
        help="training output dir to bundle (repeatable)",
    )
    ap.add_argument("--ensemble", help="ensemble YAML (its model dirs are bundled too)")
    ap.add_argument("--output", required=True, help="bundle folder to create")
    ap.add_argument(
        "--python-version",
        default="3.11",
        help="Python of the target image, MAJOR.MINOR (default 3.11): the wheels are for it",
    )
    ap.add_argument(
        "--glibc",
        default=".".join(map(str, DEFAULT_GLIBC)),
        help="glibc of the target image (default 2.35, Kaggle's Ubuntu 22.04): newest "
        "manylinux wheels taken",
    )
    ap.add_argument(
        "--detectron2-source",
        help="git archive tarball of the pinned detectron2 commit (default: found in "
        "$NUCDET_VENDOR, ../shared/vendor, the cache, else cloned)",
    )
    ap.add_argument(
        "--wheels-from",
        action="append",
        default=[],
        help="folder of wheels to take first (repeatable)",
    )
    ap.add_argument(
        "--offline",
        action="store_true",
        help="never use the registry: --wheels-from, else installed distributions repacked "
        "(only those whose tags fit the target)",
    )
    ap.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="distribution name pattern the image provides (repeatable; "
        f"default: {' '.join(DEFAULT_EXCLUDE)})",
    )
    ap.add_argument(
        "--source",
        default=".",
        help="nucdet source tree: pyproject.toml, nucdet/, infer.py, ensemble_infer.py "
        "(default: the current directory)",
    )
    ap.add_argument("--notebook", help=f"default: SOURCE/{NOTEBOOK.as_posix()}")
    ap.add_argument("--force", action="store_true", help="replace an existing --output")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[bundle %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    glibc = parse_python_version(args.glibc, "--glibc")  # same MAJOR.MINOR form
    return build_bundle(
        args.model_dir,
        args.output,
        ensemble=args.ensemble,
        wheels_from=args.wheels_from,
        offline=args.offline,
        exclude=args.exclude or DEFAULT_EXCLUDE,
        source=args.source,
        notebook=args.notebook,
        force=args.force,
        python_version=args.python_version,
        glibc=glibc,
        detectron2_src=args.detectron2_source,
    )


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, LookupError, ValueError, RuntimeError) as e:
        raise SystemExit(f"kaggle_bundle: error: {e}") from e
