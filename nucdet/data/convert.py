"""The data command line: convert datasets to COCO, validate them, split them into folds.

    python -m nucdet.data.convert sartorius train.csv --output sartorius.json [--check]
    python -m nucdet.data.convert dsb stage1_train/ --output dsb.json
    python -m nucdet.data.convert labels my_lab_data/ --output lab.json [--layout per-sample]
    python -m nucdet.data.convert to-sartorius sartorius.json --output back.csv
    python -m nucdet.data.convert check sartorius.json --image-root train/
    python -m nucdet.data.convert folds sartorius.json --k 5 --group-key sample_id

Each subcommand calls one library function (``sartorius_to_coco``,
``nucdet.data.dsb.dsb_to_coco``, ``labels_to_coco``, ``coco_to_sartorius_csv``,
``check_coco``, ``coco_folds``); this module only parses arguments. Outputs are written
atomically and only after the whole input validated. ``check`` (and ``--check`` after a
conversion) exits with status 1 when the file has errors; any conversion error exits with
status 1 and a message naming the file and row.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("nucdet.data.convert")


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _check(json_file: Path, image_root: Path, max_lines: int = 20, read: bool = True) -> int:
    from nucdet.data.check import check_coco

    report = check_coco(json_file, image_root, read_images=read)
    print(report.summary(max_lines))
    return 0 if report.ok else 1


def _sartorius(args: argparse.Namespace) -> int:
    from nucdet.data.sartorius import sartorius_to_coco

    image_dir = Path(args.image_dir) if args.image_dir else Path(args.csv).parent / "train"
    out = sartorius_to_coco(
        args.csv,
        args.output,
        image_dir=image_dir,
        image_ids=_names(args.ids),
        categories=_names(args.categories),
        workers=args.workers,
    )
    print(f"wrote {out} (image root {image_dir})")
    return _check(out, image_dir) if args.check else 0


def _dsb(args: argparse.Namespace) -> int:
    from nucdet.data.dsb import dsb_to_coco

    out = dsb_to_coco(
        args.root,
        args.output,
        image_ids=_names(args.ids),
        workers=args.workers,
        skip_bad=args.skip_bad,
    )
    print(f"wrote {out} (image root {args.root})")
    return _check(out, Path(args.root)) if args.check else 0


def _labels(args: argparse.Namespace) -> int:
    from nucdet.data.labels import labels_to_coco

    out = labels_to_coco(
        args.root,
        args.output,
        layout=args.layout,
        image_name=args.image_name,
        classes=_names(args.classes),
        single_class_name=args.class_name,
        workers=args.workers,
    )
    print(f"wrote {out} (image root {args.root})")
    return _check(out, Path(args.root)) if args.check else 0


def _to_sartorius(args: argparse.Namespace) -> int:
    from nucdet.data.sartorius import coco_to_sartorius_csv

    print(f"wrote {coco_to_sartorius_csv(args.json, args.output)}")
    return 0


def _check_cmd(args: argparse.Namespace) -> int:
    root = Path(args.image_root) if args.image_root else Path(args.json).parent
    return _check(Path(args.json), root, args.max_lines, read=not args.no_read)


def _folds(args: argparse.Namespace) -> int:
    from nucdet.data.folds import coco_folds

    paths = coco_folds(
        args.json,
        k=args.k,
        seed=args.seed,
        group_key=args.group_key,
        stratify_key=args.stratify_key,
        out_dir=args.out_dir,
        stem=args.stem,
    )
    for train, val in paths:
        print(f"{train}\n{val}")
    return 0


def _workers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes converting images (default: every core; 0 = serial); the output "
        "is the same for any number",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m nucdet.data.convert", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sartorius", help="Kaggle Sartorius train.csv (+ train/ PNGs) -> COCO")
    p.add_argument("csv")
    p.add_argument("--output", required=True)
    p.add_argument("--image-dir", help="folder of <id>.png (default: <csv folder>/train)")
    p.add_argument("--ids", help="comma-separated image ids to convert (default: all)")
    p.add_argument("--categories", help="comma-separated category order (default: sorted)")
    _workers_argument(p)
    p.add_argument("--check", action="store_true", help="validate the output afterwards")
    p.set_defaults(func=_sartorius)

    p = sub.add_parser("dsb", help="DSB2018 <id>/images + <id>/masks folders -> COCO")
    p.add_argument("root")
    p.add_argument("--output", required=True)
    p.add_argument("--ids", help="comma-separated image ids to convert (default: all)")
    _workers_argument(p)
    p.add_argument(
        "--skip-bad", action="store_true", help="leave out sample folders without images/"
    )
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_dsb)

    p = sub.add_parser("labels", help="images + label images (0 = background) -> COCO")
    p.add_argument("root")
    p.add_argument("--output", required=True)
    p.add_argument("--layout", default="auto", choices=["auto", "paired", "per-sample"])
    p.add_argument("--image-name", default="image", help="per-sample image file stem")
    p.add_argument("--classes", help="comma-separated class order (default: natural sort)")
    p.add_argument("--class-name", default="nucleus", help="category of one-class data")
    _workers_argument(p)
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_labels)

    p = sub.add_parser("to-sartorius", help="COCO -> Sartorius-style CSV")
    p.add_argument("json")
    p.add_argument("--output", required=True)
    p.set_defaults(func=_to_sartorius)

    p = sub.add_parser("check", help="validate a COCO JSON against its images")
    p.add_argument("json")
    p.add_argument("--image-root", help="default: the JSON's folder")
    p.add_argument("--no-read", action="store_true", help="do not open the images")
    p.add_argument("--max-lines", type=int, default=20)
    p.set_defaults(func=_check_cmd)

    p = sub.add_parser("folds", help="grouped, stratified K folds -> <stem>_fold{k}_*.json")
    p.add_argument("json")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-key", default="sample_id", help="image key, or 'image'")
    p.add_argument("--stratify-key", help="image key (default: majority category)")
    p.add_argument("--out-dir", help="default: the JSON's folder")
    p.add_argument("--stem", help="default: the JSON's stem")
    p.set_defaults(func=_folds)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as e:
        # Input problems: one clear line naming file and row, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
