"""Helper for test_distributed.py (not a test module): ``train_net.py``'s set-up and launch
with every rank saving its model state before and after training.

    python tests/engine/dist_train.py --num-gpus 2 --dist-backend gloo --config-file X \
        OUTPUT_DIR out ...

(or with ``--submit local --nodes 2 --num-gpus 1``: the same through a submitit job) writes
``OUTPUT_DIR/rank{r}.pth`` = {"world_size", "rank", "init", "final"} (state dicts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: train_net

from detectron2.engine import hooks  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import train_net  # noqa: E402
from nucdet.engine.cluster import submit_training  # noqa: E402
from nucdet.engine.launch import argument_parser, launch_from_args  # noqa: E402
from nucdet.engine.trainer import Trainer  # noqa: E402


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP wraps the model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(args) -> None:
    cfg = train_net.setup(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    saved = {"world_size": comm.get_world_size(), "rank": comm.get_rank()}
    trainer.register_hooks(
        [hooks.CallbackHook(before_train=lambda t: saved.update(init=_state(t.model)))]
    )
    trainer.train()
    saved["final"] = _state(trainer.model)
    torch.save(saved, Path(cfg.OUTPUT_DIR) / f"rank{comm.get_rank()}.pth")


if __name__ == "__main__":
    args = argument_parser().parse_args()
    if args.submit:  # the path of train_net.py --submit
        submit_training(main, args)
    else:
        launch_from_args(main, args)
