"""train_net.py on bad input: the config and every dataset name are checked
before anything is written, a folder's config.yaml is never replaced by another model's,
and config / checkpoint errors name the key or the file."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_CONFIG, TINY_OPTS, tiny_cfg
from detectron2.modeling import build_model

import train_net
from nucdet.config import ConfigError
from nucdet.data.register import UnknownDatasetError
from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.launch import parse_args
from nucdet.engine.trainer import RunDirError
from nucdet.io.checkpoint import CheckpointError, CheckpointMismatchError


def args_for(out, *opts, flags=()):
    return parse_args(
        ["--config-file", str(TINY_CONFIG), *flags, *TINY_OPTS, *opts, "OUTPUT_DIR", str(out)]
    )


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's folder: its config.yaml (1 class) and a checkpoint."""
    d = tmp_path / "run"
    d.mkdir()
    cfg = tiny_cfg("OUTPUT_DIR", str(d))
    (d / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    NucleiCheckpointer(build_model(cfg), save_dir=str(d)).save("model_final")
    return d


def test_unknown_datasets_fail_before_anything_is_written(run_dir, registered):
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(UnknownDatasetError) as e:
        train_net.setup(args_for(run_dir, "DATASETS.TEST", "('dsb2018_sample_vla',)"))
    msg = str(e.value)
    assert msg.startswith("DATASETS.TEST: dataset 'dsb2018_sample_vla' is not registered")
    assert "closest: dsb2018_sample_val" in msg and "sartorius_fold4_val" not in msg
    with pytest.raises(UnknownDatasetError, match=r"DATASETS.TRAIN: .*'nope'"):
        train_net.setup(args_for(run_dir, "DATASETS.TRAIN", "('nope',)"))
    assert (run_dir / "config.yaml").read_bytes() == before
    assert not (run_dir / "log.txt").exists()  # default_setup never ran


def test_config_of_a_folder_with_checkpoints_of_another_model_is_kept(run_dir, registered):
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(RunDirError, match=r"MODEL.ROI_HEADS.NUM_CLASSES: 1 -> 3"):
        train_net.setup(args_for(run_dir, "MODEL.ROI_HEADS.NUM_CLASSES", "3"))
    with pytest.raises(RunDirError, match="another model config"):  # eval-only too
        train_net.setup(args_for(run_dir, "MODEL.RESNETS.DEPTH", "34", flags=["--eval-only"]))
    assert (run_dir / "config.yaml").read_bytes() == before
    # Same model, longer schedule, other weights to evaluate: accepted (a resume / an eval).
    cfg = train_net.validate(args_for(run_dir, "SOLVER.MAX_ITER", "600", flags=["--resume"]))
    assert cfg.SOLVER.MAX_ITER == 600
    train_net.validate(args_for(run_dir, "MODEL.WEIGHTS", str(run_dir / "model_final.pth")))


def test_misspelled_keys_name_the_closest_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        train_net.validate(args_for(tmp_path, "SOLVER.MAX_ITERS", "3"))
    assert str(e.value) == (
        "command-line override: unknown config key SOLVER.MAX_ITERS; closest valid keys: "
        "SOLVER.MAX_ITER, SOLVER.WARMUP_ITERS, SOLVER.STEPS"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY_CONFIG}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASS: 3\n')
    with pytest.raises(ConfigError, match=rf"{bad} .*NUM_CLASS; closest.*ROI_HEADS.NUM_CLASSES"):
        train_net.validate(parse_args(["--config-file", str(bad)]))


def test_resume_and_eval_only_after_the_overrides_are_accepted():
    args = parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5", "--resume"])
    assert args.resume and not args.eval_only and args.opts == ["SOLVER.MAX_ITER", "5"]
    args = parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "5", "--eval-only"])
    assert args.eval_only and args.opts == ["SOLVER.MAX_ITER", "5"]


def test_checkpoint_errors_name_the_file(run_dir):
    model = build_model(tiny_cfg())
    ckpt = NucleiCheckpointer(model, save_dir=str(run_dir))
    (run_dir / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(CheckpointError, match=r"last_checkpoint names 'model_0000099.pth'"):
        ckpt.resume_or_load("", resume=True)
    # A checkpoint cut short by a kill during a copy.
    data = (run_dir / "model_final.pth").read_bytes()
    (run_dir / "model_0000099.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"run/model_0000099.pth \(\d+ bytes\): truncated"):
        ckpt.resume_or_load("", resume=True)
    # Evaluation loads strictly: 3 classes from a 1-class checkpoint is an error.
    other = build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "3"))
    with pytest.raises(CheckpointMismatchError, match=r"bbox_pred.weight \(4, 512\) vs \(12, 512"):
        NucleiCheckpointer(other, strict=True).load(str(run_dir / "model_final.pth"))


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--config-file", str(TINY_CONFIG),
         "SOLVER.MAX_ITERS", "3", "OUTPUT_DIR", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("train_net.py")] == [(
        "train_net.py: error: command-line override: unknown config key SOLVER.MAX_ITERS; "
        "closest valid keys: SOLVER.MAX_ITER, SOLVER.WARMUP_ITERS, SOLVER.STEPS"
    )]
    assert not (tmp_path / "o").exists()
