"""Wheels for the offline Kaggle bundle, for a target Python that need not be this one.

The bundle installs with ``pip install --no-index`` on an image that is not ours: its own
Python (3.11 by default) and its own torch. So this module

- lists what nucdet and detectron2 need at the versions installed here
  (``requirement_closure``), without the torch family, which the image provides;
- gets one wheel per distribution that installs on the target (``collect_wheels``): a
  ``--wheels-from`` folder first, then the package registry for the target Python
  (``pip download --only-binary=:all: --python-version ...``), then ``pip wheel`` of the
  sdist (accepted only when the result is a pure ``py3-none-any`` wheel), and offline a
  wheel repacked from the installed files when its tags fit the target;
- finds and checks the detectron2 source (``detectron2_source``) and the prebuilt
  detectron2 wheel of this machine (``detectron2_wheel``).

Where it stops: the models and ensembles are ``bundle_models``'s, the bundle's layout,
manifest and command line ``kaggle_bundle``'s.
"""

from __future__ import annotations

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
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, parse_tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from nucdet.__about__ import DETECTRON2_COMMIT, DETECTRON2_REPO, parse_detectron2_version
from nucdet.io.atomic import atomic_open

logger = logging.getLogger(__name__)

# Provided by the Kaggle image (its CUDA builds must not be replaced by ours).
DEFAULT_EXCLUDE = ("torch", "torchvision", "torchaudio", "triton", "nvidia-*", "cuda-*")
# What building detectron2 from source needs besides torch (no build isolation there).
BUILD_REQUIRES = ("setuptools", "wheel", "ninja")
# Kaggle's images are Ubuntu 22.04 (glibc 2.35); manylinux wheels up to that glibc install.
DEFAULT_GLIBC = (2, 35)
# dist-info files an installer writes; a rebuilt wheel must not carry them.
INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def normalize(name: str) -> str:
    """PEP 503 project name normalisation (``Ensemble_Boxes`` -> ``ensemble-boxes``)."""
    return canonicalize_name(name)


def parse_python_version(text: str, option: str = "--python-version") -> tuple[int, int]:
    """``"3.11"`` -> ``(3, 11)``; a clear error naming ``option`` for anything else."""
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if not m:
        raise ValueError(f"{option} {text!r}: give MAJOR.MINOR, e.g. 3.11")
    return int(m.group(1)), int(m.group(2))


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


def marker_environment(python: tuple[int, int] | None = None) -> dict[str, str]:
    """PEP 508 marker values of this machine, with the target Python's version."""
    env = dict(default_environment())
    if python is not None:
        env["python_version"] = f"{python[0]}.{python[1]}"
        env["python_full_version"] = f"{python[0]}.{python[1]}.0"
    return env


def requirement_closure(
    roots: Sequence[tuple[str, Sequence[str]]],
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    installed: dict[str, md.Distribution] | None = None,
    python: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Every installed distribution needed by ``roots`` ([(name, requirement strings)]),
    as {normalised name: installed version}, without the ``exclude`` glob patterns and
    without following their requirements. Environment markers are evaluated for the
    target ``python`` (default: this interpreter)."""
    installed = installed_distributions() if installed is None else installed
    env = marker_environment(python)
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


# ---- which wheels fit the target ---------------------------------------------------------------


def manylinux_platforms(glibc: tuple[int, int] = DEFAULT_GLIBC, arch: str = "x86_64") -> list[str]:
    """Platform tags a Linux with this glibc installs, newest first (PEP 600 + legacy)."""
    major, top = glibc
    plats = [f"manylinux_{major}_{m}_{arch}" for m in range(top, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    plats += [f"{name}_{arch}" for m, name in legacy.items() if m <= top]
    return plats


def target_tags(python: tuple[int, int], platforms: Sequence[str]) -> set[Tag]:
    """Every wheel tag CPython ``python`` installs on ``platforms`` (pure wheels included)."""
    abi = f"cp{python[0]}{python[1]}"
    tags = set(cpython_tags(python_version=python, abis=[abi], platforms=list(platforms)))
    tags |= set(compatible_tags(python_version=python, interpreter=abi, platforms=list(platforms)))
    return tags


def parse_wheel_name(filename: str) -> tuple[str, str, frozenset[Tag]] | None:
    """(normalised name, version, tags) of a ``.whl`` file name, or None if it is not one."""
    try:
        name, version, _, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None
    return str(name), str(version), tags


def wheel_fits(filename: str, tags: set[Tag]) -> bool:
    parsed = parse_wheel_name(filename)
    return parsed is not None and bool(parsed[2] & tags)


def is_pure(filename: str) -> bool:
    parsed = parse_wheel_name(filename)
    return parsed is not None and all(t.abi == "none" and t.platform == "any" for t in parsed[2])


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def find_local_wheel(dirs: Sequence[Path], name: str, version: str, tags: set[Tag]) -> Path | None:
    """A wheel of ``name==version`` that fits ``tags`` in one of ``dirs`` (first match)."""
    for d in dirs:
        for p in sorted(Path(d).glob("*.whl")):
            parsed = parse_wheel_name(p.name)
            if parsed and parsed[0] == name and _same_version(parsed[1], version):
                if parsed[2] & tags:
                    return p
    return None


# ---- getting the wheels -----------------------------------------------------------------------


def _pip(args: Sequence[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{res.stderr[-2000:]}")


def download_wheels(
    specs: Sequence[str], dest: Path, python: tuple[int, int], platforms: Sequence[str]
) -> None:
    """Binary wheels of ``specs`` for the target Python from the registry (no deps)."""
    if not specs:
        return
    args = ["download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    args += ["--python-version", f"{python[0]}.{python[1]}", "--implementation", "cp"]
    args += ["--abi", f"cp{python[0]}{python[1]}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        args += ["--platform", p]
    _pip([*args, *specs], f"pip download {' '.join(specs)}")


def build_wheels(specs: Sequence[str], dest: Path) -> None:
    """``pip wheel --no-deps`` of ``specs`` (downloads wheels, builds sdists) into ``dest``."""
    if specs:
        _pip(["wheel", "--no-deps", "-w", str(dest), *specs], f"pip wheel {' '.join(specs)}")


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


def installed_wheel_tags(dist: md.Distribution) -> list[str]:
    """The ``Tag:`` lines of an installed distribution's WHEEL file."""
    text = dist.read_text("WHEEL") or ""
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Tag:")]


def repack_installed(dist: md.Distribution, dest: Path) -> Path:
    """Rebuild the wheel of an installed distribution from the files its RECORD lists.

    pip has no command for this; it is the offline fallback (no registry, no wheel
    folder). Byte-compiled files and installer metadata are left out; files installed
    outside site-packages (console scripts in bin/) are dropped, pip regenerates them from
    entry_points.txt. Editable installs and installs without a WHEEL file: LookupError.
    """
    name = dist.metadata["Name"]
    tags = installed_wheel_tags(dist)
    if not tags or not dist.files:
        raise LookupError(
            f"{name} {dist.version}: installed without a wheel record; "
            "give its wheel with --wheels-from"
        )
    direct = dist.read_text("direct_url.json") or ""
    if '"editable": true' in direct:
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
    parts = [t.split("-") for t in tags]
    tag = "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))
    filename = f"{re.sub(r'[-_.]+', '_', name)}-{dist.version}-{tag}.whl"
    return _write_wheel(dest / filename, files, dist_info)


def collect_wheels(
    pins: dict[str, str],
    dest: Path,
    python: tuple[int, int],
    platforms: Sequence[str],
    wheels_from: Sequence[Path] = (),
    offline: bool = False,
    installed: dict[str, md.Distribution] | None = None,
) -> list[dict[str, str]]:
    """One wheel per pinned distribution that installs on the target, in ``dest``;
    returns [{name, version, file, source}]. Raises LookupError naming every
    distribution for which no fitting wheel was found."""
    installed = installed_distributions() if installed is None else installed
    tags = target_tags(python, platforms)
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, tuple[str, str]] = {}
    for name, version in pins.items():
        local = find_local_wheel(wheels_from, name, version, tags)
        if local is not None:
            shutil.copy2(local, dest / local.name)
            found[name] = (local.name, f"local:{local.parent}")

    def take(tmp: Path, source: str, accept) -> None:
        for p in sorted(tmp.glob("*.whl")):
            parsed = parse_wheel_name(p.name)
            if not parsed or parsed[0] not in pins or parsed[0] in found:
                continue
            if _same_version(parsed[1], pins[parsed[0]]) and accept(p.name):
                shutil.move(str(p), dest / p.name)
                found[parsed[0]] = (p.name, source)

    if not offline:
        with tempfile.TemporaryDirectory(prefix="nucdet-wheels-") as tmp:
            todo = [f"{n}=={pins[n]}" for n in pins if n not in found]
            # pip stops at the first spec without a binary wheel for the target: drop the
            # spec it names and run again (sdist-only distributions are few).
            while todo:
                try:
                    download_wheels(todo, Path(tmp), python, platforms)
                    break
                except RuntimeError as e:
                    m = re.search(r"satisf(?:y|ies) the requirement (\S+)", str(e))
                    bad = normalize(Requirement(m.group(1)).name) if m else None
                    rest = [t for t in todo if normalize(Requirement(t).name) != bad]
                    if bad is None or len(rest) == len(todo):
                        logger.warning("registry: %s", str(e).splitlines()[-1][:300])
                        break
                    logger.info("no binary wheel of %s for the target: built below", bad)
                    todo = rest
            take(Path(tmp), "registry", lambda f: wheel_fits(f, tags))
        with tempfile.TemporaryDirectory(prefix="nucdet-build-") as tmp:
            for spec in [f"{n}=={pins[n]}" for n in pins if n not in found]:
                try:  # sdist-only distributions: a pure wheel built here fits any CPython
                    build_wheels([spec], Path(tmp))
                except RuntimeError as e:
                    logger.warning("registry: %s", str(e).splitlines()[0])
            take(Path(tmp), "built", is_pure)
    for name in [n for n in pins if n not in found and n in installed]:
        own = installed_wheel_tags(installed[name])
        if own and any(t in tags for s in own for t in parse_tag(s)):
            logger.info("repacking installed %s %s", name, pins[name])
            found[name] = (repack_installed(installed[name], dest).name, "installed")
    missing = sorted(n for n in pins if n not in found)
    if missing:
        raise LookupError(
            f"no wheel for Python {python[0]}.{python[1]} ({platforms[0]}) found for: "
            + ", ".join(f"{n}=={pins[n]}" for n in missing)
            + (
                " (offline: only wheels in --wheels-from or installed ones that fit)"
                if offline
                else ""
            )
        )
    return [
        {"name": n, "version": pins[n], "file": found[n][0], "source": found[n][1]}
        for n in sorted(pins)
    ]


def build_nucdet_wheel(src: Path, dest: Path) -> Path:
    """The nucdet wheel: ``pip wheel --no-deps --no-build-isolation`` of a copy of the
    source tree (the build writes build/ and egg-info next to the sources); offline, as
    the build uses this environment's setuptools."""
    if not (src / "pyproject.toml").is_file() or not (src / "nucdet").is_dir():
        raise FileNotFoundError(f"{src}: not the nucdet source tree (pyproject.toml, nucdet/)")
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
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(copy)],
            "pip wheel of the nucdet source",
        )
        wheels = list(out.glob("nucdet-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip wheel built {wheels} instead of one nucdet wheel")
        return Path(shutil.move(str(wheels[0]), dest / wheels[0].name))


# ---- detectron2: its source, and a prebuilt wheel when one matches ------------------------------


def tar_commit(path: Path) -> str | None:
    """The commit id ``git archive`` writes into a tarball's pax header, or None."""
    try:
        with tarfile.open(path) as t:
            return t.pax_headers.get("comment")
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not a readable tarball: {e}") from e


def detectron2_source(
    explicit: str | os.PathLike | None, search: Sequence[Path], cache: Path
) -> Path:
    """The tarball of the pinned detectron2 commit: ``explicit``, else
    ``detectron2-<commit12>.tar.gz`` in one of ``search`` or in ``cache``, else a
    ``git archive`` of a fresh clone (saved in ``cache``). Its commit is checked."""
    short = DETECTRON2_COMMIT[:12]
    name = f"detectron2-{short}.tar.gz"
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(d) / name for d in [*search, cache]]
    for p in candidates:
        if p.is_file():
            got = tar_commit(p)
            if got != DETECTRON2_COMMIT:
                raise ValueError(
                    f"{p}: a git archive of commit {got!r}, not of the pinned detectron2 "
                    f"commit {DETECTRON2_COMMIT}"
                )
            return p
    if explicit is not None:
        raise FileNotFoundError(f"--detectron2-source {explicit}: no such file")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nucdet-d2-") as tmp:
        clone = Path(tmp) / "detectron2"
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        res = subprocess.run(
            ["git", "clone", "-q", DETECTRON2_REPO, str(clone)],
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            raise FileNotFoundError(
                f"no {name} in {', '.join(str(c.parent) for c in candidates)}, and "
                f"{DETECTRON2_REPO} cannot be cloned ({res.stderr.strip()[-200:]}): give "
                "--detectron2-source path/to/the/tarball (a 'git archive --prefix=detectron2/' "
                "of the commit)"
            )
        with atomic_open(cache / name, "wb") as f:
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(clone),
                    "archive",
                    "--format=tar.gz",
                    "--prefix=detectron2/",
                    DETECTRON2_COMMIT,
                ],
                stdout=f,
                check=True,
            )
    return cache / name


def detectron2_wheel(
    installed: dict[str, md.Distribution], cache: Path, dest: Path, python: tuple[int, int]
) -> dict[str, str] | None:
    """The detectron2 wheel of this environment, copied to ``dest``, when it is a build of
    the pinned commit (``scripts/build_detectron2.sh``) for the target Python: from the
    set-up's wheel cache, else repacked from the installed files. Returns {file, torch,
    python, version}, or None when no such build is installed here."""
    dist = installed.get("detectron2")
    if dist is None:
        return None
    build = parse_detectron2_version(dist.version)
    if build is None or not DETECTRON2_COMMIT.startswith(build["commit"]):
        logger.info("detectron2 %s is not a build of the pinned commit: source only", dist.version)
        return None
    own = (sys.version_info.major, sys.version_info.minor)
    if own != python:
        logger.info(
            "detectron2 here is for Python %d.%d, the target is %d.%d: source only", *own, *python
        )
        return None
    tag = f"cp{python[0]}{python[1]}"
    cached = sorted(cache.glob(f"detectron2-{build['commit']}-torch{build['torch']}-{tag}-*/*.whl"))
    parsed = [(p, parse_wheel_name(p.name)) for p in cached]
    wanted = [p for p, w in parsed if w and _same_version(w[1], dist.version)]
    if wanted:
        path = Path(shutil.copy2(wanted[0], dest / wanted[0].name))
    else:
        path = repack_installed(dist, dest)
    return {
        "file": path.name,
        "torch": build["torch"],
        "python": f"{python[0]}.{python[1]}",
        "version": dist.version,
    }
