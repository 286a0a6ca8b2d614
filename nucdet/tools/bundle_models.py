"""Models and ensembles of the offline Kaggle bundle: what goes into ``models/<name>/`` and
``ensembles/``.

- ``bundle_model`` copies a training output dir's ``config.yaml`` and its weights (best,
  else final, else last checkpoint, as infer.py chooses) stripped to the model state (no
  optimizer: a third of the size); a config with ``INPUT.NORMALIZATION: dataset`` gets its
  dataset mean/std written in, so the bundled model needs no stats file.
- ``rewrite_ensemble`` rewrites the paths of an ensemble YAML to their place in the bundle,
  ``{bundle}/models/<name>`` (the notebook substitutes the mounted path), and lists the
  model dirs and other files (routing ids) the YAML names, which the bundle carries too.

Where it stops: the wheels are ``nucdet.tools.bundle_wheels``'s, the bundle's layout,
manifest and command line ``nucdet.tools.kaggle_bundle``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nucdet.io.atomic import atomic_open
from nucdet.tools.report import load_config_flat

PLACEHOLDER = "{bundle}"  # the bundle's folder in bundled paths; the notebook fills it in


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
        from nucdet.config import build_cfg

        cfg = build_cfg(config)
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
