"""Offline Kaggle bundle: one folder to upload as a Kaggle dataset for a code competition.

    python -m nucdet.tools.kaggle_bundle --model-dir output/r50 [--model-dir output/x101] \
        [--ensemble configs/ensembles/r50_x101.yaml] --output dist/nucdet-bundle \
        [--wheels-from wheelhouse/] [--offline] [--exclude 'numpy'] [--force]
    make kaggle-bundle BUNDLE_ARGS="--model-dir output/r50 --output dist/nucdet-bundle"

The folder holds:

- ``wheels/``: the nucdet wheel, the detectron2 wheel that is installed here
  (``sal-detectron2``), and every other distribution those two need, at the versions
  installed here, except the ``--exclude`` patterns (default: the torch family, which the
  Kaggle GPU image provides with its CUDA build). Each wheel comes from ``--wheels-from``
  folders first, else the package registry (``pip wheel --no-deps``, which also builds
  wheels of sdist-only packages), else (``--offline``, or when the registry fails) it is
  repacked from the installed files (``RECORD``), which needs no network at all.
- ``models/<name>/``: ``config.yaml`` and the weights (best, else final, else last
  checkpoint) stripped to the model state (no optimizer: a third of the size).
- ``ensembles/<name>.yaml``: the ``--ensemble`` YAML with its model paths rewritten to
  ``{bundle}/models/<name>`` (the notebook substitutes the mounted path).
- ``scripts/``: ``infer.py`` and ``ensemble_infer.py`` (entry points are not in the wheel;
  the notebook runs them as scripts with the installed nucdet).
- ``kaggle_submission.ipynb`` (a copy of notebooks/kaggle_submission.ipynb) and
  ``bundle.json``: the manifest the notebook reads (what to install, the models, the
  inference command templates, the torch/Python versions the bundle was built against).

Only Linux x86_64 with the same Python minor version as this environment can install the
compiled wheels (nucdet requires Python 3.10). detectron2's compiled ops must match the
torch the Kaggle image provides; the notebook checks both and says so when they differ.
"""

from __future__ import annotations

import argparse
import base64
import csv
import fnmatch
import hashlib
import importlib.metadata as md
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from nucdet.io.atomic import atomic_open, atomic_write_json
from nucdet.tools.report import load_config_flat

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "kaggle_submission.ipynb"
SCRIPTS = ("infer.py", "ensemble_infer.py")
MANIFEST = "bundle.json"
# Provided by the Kaggle GPU image (its CUDA builds must not be replaced by ours).
DEFAULT_EXCLUDE = ("torch", "torchvision", "torchaudio", "triton", "nvidia-*")
# dist-info files an installer writes; a rebuilt wheel must not carry them.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
PLACEHOLDER = "{bundle}"


def normalize(name: str) -> str:
    """PEP 503 project name normalisation (``Sal_Detectron2`` -> ``sal-detectron2``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- which distributions ---------------------------------------------------------------------


def installed_distributions() -> dict[str, md.Distribution]:
    """Installed distributions by normalised name (first on sys.path wins, as for imports)."""
    out: dict[str, md.Distribution] = {}
    for d in md.distributions():
        name = d.metadata["Name"]
        if name and normalize(name) not in out:
            out[normalize(name)] = d
    return out


def distribution_of(module: str) -> str:
    """Name of the installed distribution providing top-level ``module``."""
    names = md.packages_distributions().get(module)
    if not names:
        raise LookupError(f"no installed distribution provides the module {module!r}")
    return normalize(names[0])


def requirement_closure(
    roots: Sequence[tuple[str, Sequence[str]]],
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    installed: dict[str, md.Distribution] | None = None,
) -> dict[str, str]:
    """Every installed distribution needed by ``roots`` ([(name, requirement strings)]),
    as {normalised name: installed version}, without the ``exclude`` glob patterns and
    without following their requirements. Environment markers are evaluated here."""
    installed = installed_distributions() if installed is None else installed
    env = default_environment()
    out: dict[str, str] = {}

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatch(name, normalize(p)) for p in exclude)

    def visit(requires: Iterable[str], extras: set[str], parent: str) -> None:
        for text in requires:
            try:
                req = Requirement(text)
            except InvalidRequirement as e:
                raise ValueError(f"{parent}: invalid requirement {text!r}: {e}") from e
            if req.marker is not None:
                if not any(req.marker.evaluate({**env, "extra": x}) for x in extras or {""}):
                    continue
            name = normalize(req.name)
            if excluded(name) or name in out:
                continue
            dist = installed.get(name)
            if dist is None:
                raise LookupError(f"{parent} needs {text!r}, which is not installed here")
            if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
                raise LookupError(f"{parent} needs {text!r} but {name} {dist.version} is installed")
            out[name] = dist.version
            visit(dist.requires or [], set(req.extras), f"{name} {dist.version}")

    for name, requires in roots:
        visit(requires, set(), name)
    return out


# ---- where the wheels come from ---------------------------------------------------------------


def parse_wheel_name(filename: str) -> tuple[str, str] | None:
    """(normalised name, version) of a ``.whl`` file name, or None if it is not one."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return None
    return normalize(parts[0]), parts[1]


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def find_local_wheel(dirs: Sequence[Path], name: str, version: str) -> Path | None:
    """A wheel of ``name==version`` in one of ``dirs`` (first match, sorted file names)."""
    for d in dirs:
        for p in sorted(Path(d).glob("*.whl")):
            parsed = parse_wheel_name(p.name)
            if parsed and parsed[0] == name and _same_version(parsed[1], version):
                return p
    return None


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _write_wheel(path: Path, files: Iterable[tuple[str, bytes]], dist_info: str) -> Path:
    """Write a wheel zip with a fresh RECORD (``files`` exclude RECORD), atomically."""
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, data in files:
            z.writestr(arcname, data)
            writer.writerow([arcname, _record_hash(data), len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        z.writestr(f"{dist_info}/RECORD", record.getvalue())
    return path


def _wheel_tag(wheel_text: str, source: str) -> str:
    """The compressed tag set (``cp310-cp310-manylinux_2_17_x86_64``) of a WHEEL file."""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    ]
    if not tags:
        raise ValueError(f"{source}: WHEEL file has no Tag line")
    parts = [t.split("-") for t in tags]
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def repack_installed(dist: md.Distribution, dest: Path) -> Path:
    """Rebuild the wheel of an installed distribution from the files its RECORD lists.

    Byte-compiled files and installer metadata are left out; console scripts are
    regenerated by pip from entry_points.txt, so files installed outside site-packages
    (bin/) are dropped. Editable installs and installs without a WHEEL file (old
    ``setup.py install``) cannot be repacked: LookupError.
    """
    name = dist.metadata["Name"]
    wheel_text = dist.read_text("WHEEL")
    if not wheel_text or not dist.files:
        raise LookupError(
            f"{name} {dist.version}: installed without a wheel record; "
            "give its wheel with --wheels-from"
        )
    if dist.read_text("direct_url.json") and '"editable": true' in dist.read_text(
        "direct_url.json"
    ):
        raise LookupError(f"{name} {dist.version} is an editable install: build its wheel")
    dist_info = next(
        (str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA")), None
    )
    if dist_info is None:
        raise LookupError(f"{name} {dist.version}: no .dist-info/METADATA in its RECORD")
    files: list[tuple[str, bytes]] = []
    for f in dist.files:
        rel = str(f)
        if rel.startswith("..") or rel.endswith(".pyc") or "__pycache__" in rel:
            continue
        if rel.startswith(dist_info + "/") and rel.split("/", 1)[1] in INSTALLER_FILES:
            continue
        path = Path(dist.locate_file(f))
        if not path.is_file():
            raise LookupError(f"{name} {dist.version}: {path} from its RECORD is missing")
        files.append((rel, path.read_bytes()))
    filename = f"{re.sub(r'[-_.]+', '_', name)}-{dist.version}-{_wheel_tag(wheel_text, name)}.whl"
    return _write_wheel(dest / filename, files, dist_info)


def registry_wheels(specs: Sequence[str], dest: Path) -> None:
    """``pip wheel --no-deps`` of ``specs`` into ``dest`` (downloads wheels, builds sdists)."""
    if not specs:
        return
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-q",
        "-w",
        str(dest),
        *specs,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(specs)} failed:\n{res.stderr[-2000:]}")


def collect_wheels(
    pins: dict[str, str],
    dest: Path,
    wheels_from: Sequence[Path] = (),
    offline: bool = False,
    installed: dict[str, md.Distribution] | None = None,
) -> list[dict[str, str]]:
    """One wheel per pinned distribution in ``dest``; returns [{name, version, file, source}]."""
    installed = installed_distributions() if installed is None else installed
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[Path, str]] = {}
    for name, version in pins.items():
        local = find_local_wheel(wheels_from, name, version)
        if local is not None:
            found[name] = (Path(shutil.copy2(local, dest / local.name)), f"local:{local.parent}")
    missing = [n for n in pins if n not in found]
    if missing and not offline:
        with tempfile.TemporaryDirectory(prefix="nucdet-wheels-") as tmp:
            specs = [f"{n}=={pins[n]}" for n in missing]
            try:
                registry_wheels(specs, Path(tmp))
            except RuntimeError as e:
                # One bad spec fails the batch: retry one by one to keep the others.
                logger.warning("%s; retrying one package at a time", str(e).splitlines()[0])
                for spec in specs:
                    try:
                        registry_wheels([spec], Path(tmp))
                    except RuntimeError as e1:
                        logger.warning("registry: %s", str(e1).splitlines()[0])
            for p in Path(tmp).glob("*.whl"):
                parsed = parse_wheel_name(p.name)
                if parsed and parsed[0] in pins and _same_version(parsed[1], pins[parsed[0]]):
                    found[parsed[0]] = (Path(shutil.move(str(p), dest / p.name)), "registry")
    for name in (n for n in pins if n not in found):
        if name not in installed:
            raise LookupError(f"{name}=={pins[name]}: no wheel found and not installed here")
        logger.info("repacking installed %s %s", name, pins[name])
        found[name] = (repack_installed(installed[name], dest), "installed")
    return [
        {"name": n, "version": pins[n], "file": found[n][0].name, "source": found[n][1]}
        for n in sorted(pins)
    ]


# ---- the nucdet wheel -------------------------------------------------------------------------


def _read_pyproject(src: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((src / "pyproject.toml").read_text())


def write_pure_wheel(src: Path, dest: Path) -> Path:
    """The nucdet wheel written directly from the source tree, without a build backend.

    Used offline (a PEP 517 build needs setuptools and wheel from an index). Same content
    as setuptools' build with ``packages.find include = ["nucdet*"]`` (namespaces on): every
    ``.py`` file below ``nucdet/``; metadata from pyproject.toml.
    """
    project = _read_pyproject(src)["project"]
    name, version = project["name"], project["version"]
    dist_info = f"{name}-{version}.dist-info"
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {project.get('description', '')}",
    ]
    if "requires-python" in project:
        meta.append(f"Requires-Python: {project['requires-python']}")
    meta += [f"Requires-Dist: {r}" for r in project.get("dependencies", [])]
    files = [
        (p.relative_to(src).as_posix(), p.read_bytes())
        for p in sorted((src / "nucdet").rglob("*.py"))
        if "__pycache__" not in p.parts
    ]
    files += [
        (f"{dist_info}/METADATA", ("\n".join(meta) + "\n").encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: nucdet.tools.kaggle_bundle\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (f"{dist_info}/top_level.txt", b"nucdet\n"),
    ]
    return _write_wheel(dest / f"{name}-{version}-py3-none-any.whl", files, dist_info)


def build_nucdet_wheel(src: Path, dest: Path, offline: bool = False) -> Path:
    """``pip wheel --no-deps`` of a copy of the source tree (the build writes build/ and
    egg-info next to the sources), or ``write_pure_wheel`` when offline."""
    if not (src / "pyproject.toml").is_file() or not (src / "nucdet").is_dir():
        raise FileNotFoundError(f"{src}: not the nucdet source tree (pyproject.toml, nucdet/)")
    if offline:
        return write_pure_wheel(src, dest)
    with tempfile.TemporaryDirectory(prefix="nucdet-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for item in ("pyproject.toml", "README.md", "LICENSE"):
            if (src / item).is_file():
                shutil.copy2(src / item, copy / item)
        shutil.copytree(
            src / "nucdet", copy / "nucdet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        out = Path(tmp) / "out"
        registry_wheels([str(copy)], out)
        wheels = list(out.glob("nucdet-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip wheel built {wheels} instead of one nucdet wheel")
        return Path(shutil.move(str(wheels[0]), dest / wheels[0].name))


# ---- models and ensembles ----------------------------------------------------------------------


def bundled_weights_name(weights: Path) -> str:
    """The file name of ``weights`` in the bundle: ``model_best.pth`` / ``model_final.pth``
    keep theirs, any other checkpoint becomes ``model_final.pth``, so that infer.py's
    choice (best, else final) picks the one weights file a bundled model has."""
    keep = ("model_best.pth", "model_final.pth")
    return weights.name if weights.name in keep else "model_final.pth"


def bundle_model(model_dir: Path, dest: Path, weights: Path | None = None) -> dict[str, Any]:
    """Copy config.yaml and the model weights (optimizer state dropped) into ``dest``.

    ``weights`` defaults to what infer.py would use (best, else final, else last).

    A config with ``INPUT.NORMALIZATION: dataset`` reads a stats file at run time: its
    mean/std are written into the bundled config instead, so the bundle is self-contained.
    """
    import torch

    from nucdet.inference.predictor import find_weights

    config = model_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.yaml (not a training output dir?)")
    weights = Path(weights) if weights is not None else find_weights(model_dir)
    dest.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(weights, map_location="cpu")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{weights}: not a detectron2 checkpoint (no 'model' key)")
    name = bundled_weights_name(weights)
    with atomic_open(dest / name, "wb") as f:
        torch.save({"model": ckpt["model"], "iteration": ckpt.get("iteration")}, f)
    cfg_text = config.read_text()
    if load_config_flat(config).get("INPUT.NORMALIZATION") == "dataset":
        from nucdet.data.mapper import apply_normalization
        from nucdet.engine.defaults import build_cfg

        cfg = apply_normalization(build_cfg(config))
        cfg.INPUT.NORMALIZATION = "detectron2"
        cfg.INPUT.DATASET_STATS = ""
        cfg_text = cfg.dump()
    with atomic_open(dest / "config.yaml", "w") as f:
        f.write(cfg_text)
    return {"weights": name, "source_weights": str(weights), "iteration": ckpt.get("iteration")}


def rewrite_ensemble(
    ensemble: dict[str, Any], base_dirs: Sequence[Path], models: dict[Path, str]
) -> tuple[Any, dict[Path, str], dict[Path, Path], dict[Path, str]]:
    """Replace every path in the ensemble YAML that points into a model directory by its
    place in the bundle: ``{bundle}/models/<name>`` for the directory, ``.../<file>`` for a
    file in it (a weights file by its ``bundled_weights_name``). Directories holding a
    config.yaml that are not among ``models`` yet are added (name = directory name, made
    unique). Paths are resolved against ``base_dirs`` in order.

    Any other existing file the YAML names (a routing ``ids_file``, say) is listed in
    ``files`` and becomes ``{bundle}/ensembles/files/<name>``; the caller copies it there.

    Returns (new YAML data, models, {model dir: the weights file the YAML names},
    files {source path: path in the bundle}).
    """
    models = dict(models)
    weights: dict[Path, Path] = {}
    files: dict[Path, str] = {}

    def model_name_for(d: Path) -> str:
        if d not in models:
            taken = set(models.values())
            name, k = d.name, 1
            while name in taken:
                k += 1
                name = f"{d.name}_{k}"
            models[d] = name
        return models[d]

    def resolve(text: str) -> Path | None:
        for base in base_dirs:
            p = (base / text).resolve()
            if p.exists():
                return p
        return None

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v) for v in node]
        if not isinstance(node, str) or not node or "\n" in node:
            return node
        p = resolve(node)
        if p is None:
            return node
        if p.is_dir() and (p / "config.yaml").is_file():
            return f"{PLACEHOLDER}/models/{model_name_for(p)}"
        if p.is_file() and (p.parent / "config.yaml").is_file():
            name = model_name_for(p.parent)
            if p.suffix == ".pth":
                if weights.setdefault(p.parent, p) != p:
                    raise ValueError(
                        f"the ensemble names two weights files of {p.parent}: "
                        f"{weights[p.parent].name} and {p.name}"
                    )
                return f"{PLACEHOLDER}/models/{name}/{bundled_weights_name(p)}"
            return f"{PLACEHOLDER}/models/{name}/{p.name}"
        if p.is_file():
            if p not in files:
                stem, k, taken = p.name, 1, set(files.values())
                while f"ensembles/files/{stem}" in taken:
                    k += 1
                    stem = f"{k}_{p.name}"
                files[p] = f"ensembles/files/{stem}"
            return f"{PLACEHOLDER}/{files[p]}"
        return node

    return visit(ensemble), models, weights, files


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


def build_bundle(
    model_dirs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    ensemble: str | os.PathLike | None = None,
    wheels_from: Sequence[str | os.PathLike] = (),
    offline: bool = False,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    source: str | os.PathLike = REPO,
    notebook: str | os.PathLike = NOTEBOOK,
    force: bool = False,
) -> Path:
    """Build the bundle folder (see the module docstring); returns the manifest path.

    The folder is assembled under a temporary name next to ``output`` and renamed at the
    end, so an interrupted build never leaves a half bundle under the final name.
    """
    output, source = Path(output).resolve(), Path(source).resolve()
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
            Path(notebook),
        )
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "bundle: %s (%d wheels, models %s)",
        output,
        len(manifest["wheels"]),
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

    wheels = out / "wheels"
    wheels.mkdir()
    nucdet_whl = build_nucdet_wheel(source, wheels, offline=offline)
    nucdet_name, nucdet_version = parse_wheel_name(nucdet_whl.name)
    with zipfile.ZipFile(nucdet_whl) as z:
        meta = z.read(f"nucdet-{nucdet_version}.dist-info/METADATA").decode()
    nucdet_requires = [
        ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")
    ]
    installed = installed_distributions()
    d2 = distribution_of("detectron2")
    d2_version = installed[d2].version
    pins = requirement_closure(
        [("nucdet", nucdet_requires), ("detectron2", [f"{d2}=={d2_version}"])],
        exclude=exclude,
        installed=installed,
    )
    pins.pop(nucdet_name, None)
    manifest["wheels"] = [
        {
            "name": nucdet_name,
            "version": nucdet_version,
            "file": nucdet_whl.name,
            "source": "built",
        },
        *collect_wheels(pins, wheels, wheels_from, offline, installed),
    ]
    manifest["install"] = [f"{nucdet_name}=={nucdet_version}", f"{d2}=={d2_version}"]
    manifest["excluded"] = list(exclude)

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
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        platform=sys.platform,
        torch=installed["torch"].version.split("+")[0] if "torch" in installed else None,
        torchvision=installed["torchvision"].version if "torchvision" in installed else None,
        detectron2={"dist": d2, "version": d2_version},
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
        "--wheels-from",
        action="append",
        default=[],
        help="folder of wheels to take first (repeatable)",
    )
    ap.add_argument(
        "--offline",
        action="store_true",
        help="never use the registry: repack installed distributions",
    )
    ap.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="distribution name pattern the Kaggle image provides (repeatable; "
        f"default: {' '.join(DEFAULT_EXCLUDE)})",
    )
    ap.add_argument("--source", default=str(REPO), help="nucdet source tree (pyproject.toml)")
    ap.add_argument("--notebook", default=str(NOTEBOOK))
    ap.add_argument("--force", action="store_true", help="replace an existing --output")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[bundle %(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
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
    )


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, LookupError, ValueError, RuntimeError) as e:
        raise SystemExit(f"kaggle_bundle: error: {e}") from e
