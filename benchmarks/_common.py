"""Code shared by the benchmark scripts, imported as a sibling module (python puts the
running script's folder, benchmarks/, on sys.path; tests/benchmarks/conftest.py does the
same for the tests).

- ``stratified_subset``: the periodic-evaluation subset of ``train_recipe.py``, also the
  images ``baseline_watershed.py --tune`` chooses its parameters on.

Library concepts (metrics.json, statistics, COCO subsets, sample data) live in the nucdet
package, not here.
"""

from __future__ import annotations


def stratified_subset(images: list[dict], size: int) -> list[dict]:
    """``size`` images: all of the rarest modalities first, then fill with the others.

    Within a modality the order is the image id (the folder hash): fixed and unrelated to
    content. Each modality keeps at least a share proportional to its count when it has
    to be cut, so the subset's mix is never all-fluorescence.
    """
    by_mod: dict[str, list[dict]] = {}
    for im in sorted(images, key=lambda im: im["file_name"]):
        by_mod.setdefault(im.get("modality", ""), []).append(im)
    total = sum(len(v) for v in by_mod.values())
    if size >= total:
        return [im for v in by_mod.values() for im in v]
    quota = {m: max(1, round(size * len(v) / total)) for m, v in by_mod.items()}
    # rare modalities keep up to a quarter of the subset each (a handful of images)
    for m in by_mod:
        quota[m] = min(len(by_mod[m]), max(quota[m], size // 4))
    order = sorted(by_mod, key=lambda m: len(by_mod[m]))
    chosen: list[dict] = []
    for m in order[:-1]:
        chosen += by_mod[m][: quota[m]]
    chosen += by_mod[order[-1]][: size - len(chosen)]
    return chosen


def comma_choices(text: str, allowed, flag: str) -> list[str]:
    """The comma-separated names of ``text`` (blanks dropped), each one of ``allowed``;
    an unknown name is an error naming ``flag``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"{flag}: {bad} not in {list(allowed)}")
    return names
