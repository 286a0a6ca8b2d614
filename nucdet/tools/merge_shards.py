"""Merge the output folders of ``infer.py`` / ``ensemble_infer.py --shard i/n`` runs into
the one submission (checks in ``nucdet.inference.shards.merge_shards``).

    python -m nucdet.tools.merge_shards out/shard-0 out/shard-1 ... --output out/merged
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from nucdet.inference.shards import ShardError, merge_shards

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m nucdet.tools.merge_shards", description=__doc__)
    ap.add_argument("dirs", nargs="+", help="output folders of the shard runs, one per shard")
    ap.add_argument("--output", required=True, help="folder of the merged submission")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[merge_shards] %(message)s")
    metrics = merge_shards(args.dirs, args.output)
    summary = {k: v for k, v in metrics.items() if k not in ("per_image", "shards")}
    logger.info("merged %d shard(s): %s", len(args.dirs), json.dumps(summary))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ShardError, OSError) as e:
        sys.exit(f"merge_shards: error: {e}")
