"""Sweep orchestration: names, dry run, kill + resume, shards + merge, failures.

These tests drive the sweep with ``standin_train.py`` (same command line and output files as
train_net.py, no model) so they take seconds; test_sweep_train.py runs the real trainer.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nucdet.tools import sweep

STANDIN = str(Path(__file__).with_name("standin_train.py"))
GRID = ["--grid", "STANDIN.SCORE=0.1,0.2", "--grid", "MODEL.ROI_HEADS.NAME=A,B"]
NAMES = ["score-0.1__name-A", "score-0.1__name-B", "score-0.2__name-A", "score-0.2__name-B"]


def sweep_args(out: Path, *extra: str, grid: list[str] | None = None) -> list[str]:
    """The sweep command line with the stand-in trainer (``grid``: ``--grid`` flags)."""
    return [
        "--config-file",
        "base.yaml",
        *(GRID if grid is None else grid),
        "--output",
        str(out),
        "--python",
        sys.executable,
        "--train-script",
        STANDIN,
        *extra,
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_values_keeps_brackets_and_quotes():
    assert sweep.split_values("1,2") == ["1", "2"]
    assert sweep.split_values("(0.8,1.2),(1.0, 1.0)") == ["(0.8,1.2)", "(1.0, 1.0)"]
    assert sweep.split_values("[[8],[16]],'a,b'") == ["[[8],[16]]", "'a,b'"]
    with pytest.raises(ValueError, match="unbalanced"):
        sweep.split_values("(1,2")
    with pytest.raises(ValueError, match="KEY=v1"):
        sweep.parse_grid_arg("SOLVER.MAX_ITER")


def test_run_names_are_short_unique_and_stable():
    grid = [
        ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", ["64", "128"]),
        ("INPUT.AUG.ROT90", ["True", "False"]),
    ]
    runs = sweep.build_runs("c.yaml", grid)
    assert [r.name for r in runs] == [
        "batch_size_per_image-64__rot90-True",
        "batch_size_per_image-64__rot90-False",
        "batch_size_per_image-128__rot90-True",
        "batch_size_per_image-128__rot90-False",
    ]
    assert [r.index for r in runs] == [0, 1, 2, 3]
    assert runs[2].overrides == (
        ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"),
        ("INPUT.AUG.ROT90", "True"),
    )
    # Adding a grid value keeps the names of the runs that existed before.
    grown = sweep.build_runs("c.yaml", [(grid[0][0], ["64", "128", "256"]), grid[1]])
    assert {r.name for r in runs} < {r.name for r in grown}
    # Keys with the same last part get a longer suffix.
    assert sweep.short_keys(["MODEL.RPN.NMS_THRESH", "MODEL.ROI_HEADS.NMS_THRESH"]) == {
        "MODEL.RPN.NMS_THRESH": "rpn.nms_thresh",
        "MODEL.ROI_HEADS.NMS_THRESH": "roi_heads.nms_thresh",
    }
    long = sweep.build_runs("c.yaml", [("A.B", ["x" * 200])])[0].name
    assert len(long) <= sweep.MAX_NAME


def test_named_runs_yaml_cross_grid(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "config_file: base.yaml\n"
        "opts: {SOLVER.MAX_ITER: 2}\n"
        "grid: {INPUT.AUG.ROT90: [true, false]}\n"
        "runs:\n"
        "  - {name: r18, opts: {MODEL.RESNETS.DEPTH: 18}}\n"
        "  - {name: anchors, opts: {MODEL.ANCHOR_GENERATOR.SIZES: [[8], [16]]}}\n"
    )
    text = sweep.main(
        ["--runs", str(spec), "--output", str(tmp_path / "o"), "--dry-run", "TEST.EVAL_PERIOD", "0"]
    )
    assert text.splitlines()[0] == f"4 of 4 runs -> {tmp_path / 'o'}"
    assert "[0] r18__rot90-True (todo): MODEL.RESNETS.DEPTH=18; INPUT.AUG.ROT90=True" in text
    assert (
        "[3] anchors__rot90-False (todo): MODEL.ANCHOR_GENERATOR.SIZES=[[8], [16]]; "
        "INPUT.AUG.ROT90=False"
    ) in text
    # YAML opts first, then the command line's, then the run's own overrides.
    assert (
        "--config-file base.yaml SOLVER.MAX_ITER 2 TEST.EVAL_PERIOD 0 "
        "MODEL.RESNETS.DEPTH 18 INPUT.AUG.ROT90 True OUTPUT_DIR"
    ) in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - {opts: {A: 1}}\n")
    with pytest.raises(ValueError, match=r"runs\[0\] needs a 'name'"):
        sweep.main(["--runs", str(bad), "--output", str(tmp_path / "o"), "--dry-run"])


def test_dry_run_prints_runs_and_commands_and_shards(tmp_path, capsys):
    out = tmp_path / "sw"
    sweep.main(sweep_args(out, "--dry-run", "SOLVER.MAX_ITER", "2"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"4 of 4 runs -> {out}"
    assert [ln.split()[1] for ln in lines[1::2]] == NAMES
    cmd = lines[2].split()
    assert cmd[:4] == [sys.executable, STANDIN, "--config-file", "base.yaml"]
    assert cmd[4:] == [
        "SOLVER.MAX_ITER",
        "2",
        "STANDIN.SCORE",
        "0.1",
        "MODEL.ROI_HEADS.NAME",
        "A",
        "OUTPUT_DIR",
        str(out / "runs" / NAMES[0]),
    ]
    assert not out.exists(), "a dry run writes nothing"
    sweep.main(sweep_args(out, "--dry-run", "--shard", "1/2"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"2 of 4 runs -> {out}"
    assert [ln.split()[0] for ln in lines[1::2]] == ["[1]", "[3]"]
    with pytest.raises(ValueError, match="i/n"):
        sweep.main(sweep_args(out, "--dry-run", "--shard", "2/2"))


def _wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_sweep_resumes_without_recomputing_finished_runs(tmp_path):
    out = tmp_path / "sw"
    runs = out / "runs"
    cmd = [
        sys.executable,
        "-m",
        "nucdet.tools.sweep",
        *sweep_args(out, "SOLVER.MAX_ITER", "6", "STANDIN.SLEEP", "0.15"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: (runs / NAMES[0] / sweep.DONE_FILE).is_file(), 60, "run 0 to finish")
        _wait_for(lambda: (runs / NAMES[1] / "last_checkpoint").is_file(), 60, "a run-1 ckpt")
        # A crash: the sweep and its trainer die at once (SIGKILL to the process group).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done0 = runs / NAMES[0] / sweep.DONE_FILE
    mtime0 = done0.stat().st_mtime_ns
    assert not (runs / NAMES[1] / sweep.DONE_FILE).exists()
    assert not (out / "results.csv").exists() or len(read_csv(out / "results.csv")) == 1

    sweep.main(sweep_args(out, "SOLVER.MAX_ITER", "6", "STANDIN.SLEEP", "0.15"))

    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == NAMES
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [float(r["segm/MaP-IoU"]) for r in rows] == pytest.approx([0.6, 0.6, 0.7, 0.7])
    assert [float(r["segm/AP"]) for r in rows] == pytest.approx([60, 60, 70, 70])
    assert [r["iterations"] for r in rows] == ["6"] * 4
    # Run 0 was not recomputed: one start, marker untouched.
    assert done0.stat().st_mtime_ns == mtime0
    assert (runs / NAMES[0] / "standin_starts.txt").read_text() == "resume=0 start=0\n"
    assert rows[0]["attempts"] == "1"
    # Run 1 was killed mid-training and resumed from its checkpoint.
    starts = (runs / NAMES[1] / "standin_starts.txt").read_text().splitlines()
    assert starts[0] == "resume=0 start=0" and len(starts) == 2
    assert starts[1].startswith("resume=1 start=") and int(starts[1].split("=")[-1]) > 0
    assert rows[1]["attempts"] == "2"
    assert float(rows[1]["wall_time_s"]) > 0
    # The later runs ran once each.
    for name in NAMES[2:]:
        assert (runs / name / "standin_starts.txt").read_text() == "resume=0 start=0\n"
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| index | name | status | overrides | iterations | wall_time_s |")
    assert len([ln for ln in md if ln.startswith("| ")]) == 5
    header = md[0].split(" | ")
    assert header.index("segm/MaP-IoU") < header.index("segm/AP") < header.index("bbox/AP")

    # A third invocation recomputes nothing at all.
    before = {n: (runs / n / sweep.DONE_FILE).stat().st_mtime_ns for n in NAMES}
    sweep.main(sweep_args(out, "SOLVER.MAX_ITER", "6", "STANDIN.SLEEP", "0.15"))
    assert before == {n: (runs / n / sweep.DONE_FILE).stat().st_mtime_ns for n in NAMES}


def test_sigterm_stops_the_trainer_child(tmp_path):
    out = tmp_path / "sw"
    metrics = out / "runs" / NAMES[0] / "metrics.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nucdet.tools.sweep",
            *sweep_args(out, "SOLVER.MAX_ITER", "200", "STANDIN.SLEEP", "0.05"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, 60, "training")
        proc.send_signal(signal.SIGTERM)  # the sweep only, not its process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert b"re-run the same command to resume" in err
    size = metrics.stat().st_size
    time.sleep(0.5)
    assert metrics.stat().st_size == size, "the trainer kept running after the sweep stopped"


def test_shards_on_two_machines_then_merge(tmp_path):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    sweep.main(sweep_args(a, "--shard", "0/2"))
    sweep.main(sweep_args(b, "--shard", "1/2"))
    assert sorted(p.name for p in (a / "runs").iterdir()) == [NAMES[0], NAMES[2]]
    rows_a = read_csv(a / "results.shard-0-of-2.csv")
    assert [r["index"] for r in rows_a] == ["0", "2"]
    sweep.main(["merge", str(b), str(a), "--output", str(merged)])
    rows = read_csv(merged / "results.csv")
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["name"] for r in rows] == NAMES
    assert [float(r["segm/MaP-IoU"]) for r in rows] == pytest.approx([0.6, 0.6, 0.7, 0.7])
    assert (merged / "results.md").read_text().count("| done |") == 4
    with pytest.raises(FileNotFoundError, match="no results.csv"):
        sweep.merge_tables([tmp_path / "empty"], merged)


def test_failed_run_is_reported_and_retried(tmp_path):
    out = tmp_path / "sw"
    args = sweep_args(out, grid=["--grid", "STANDIN.FAIL=0,1"])
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: fail-1"):
        sweep.main(args)
    rows = read_csv(out / "results.csv")
    assert [(r["name"], r["status"]) for r in rows] == [("fail-0", "done"), ("fail-1", "failed")]
    log = (out / "runs" / "fail-1" / sweep.LOG_FILE).read_text()
    assert "failing as asked" in log
    with pytest.raises(RuntimeError, match="fail-1"):
        sweep.main(args)  # retried (and fails again); fail-0 is not rerun
    assert (out / "runs" / "fail-0" / "standin_starts.txt").read_text().count("\n") == 1


def test_restart_with_other_shared_overrides_is_refused(tmp_path):
    out = tmp_path / "sw"
    args = sweep_args(out, grid=["--grid", "STANDIN.FAIL=1"])
    with pytest.raises(RuntimeError):
        sweep.main([*args, "SOLVER.MAX_ITER", "2"])
    with pytest.raises(ValueError, match="started with other settings"):
        sweep.run_one(
            sweep.build_runs("base.yaml", [("STANDIN.FAIL", ["1"])])[0],
            sweep.SweepSettings(
                output=out,
                common_opts=("SOLVER.MAX_ITER", "3"),
                python=sys.executable,
                train_script=STANDIN,
            ),
        )


def test_summary_reads_last_and_best_evaluation(tmp_path):
    rows = [
        {"iteration": 0, "total_loss": 2.0},
        {"iteration": 9, "total_loss": 1.0, "segm/MaP-IoU": 0.3, "segm/AP": 20.0},
        {"iteration": 19, "total_loss": 0.5, "segm/MaP-IoU": 0.2, "segm/AP": 25.0},
        {"iteration": 20, "segm/MaP-IoU": 0.25, "segm/AP": 24.0},
    ]
    (tmp_path / "metrics.json").write_text(
        "\n".join(json.dumps(r) for r in rows) + '\n{"iteration": 21, "tot'
    )  # killed mid-line
    s = sweep.summarize_run(tmp_path)
    assert s["iterations"] == 20
    assert s["final"] == {"segm/MaP-IoU": 0.25, "segm/AP": 24.0} and s["final_iteration"] == 20
    assert s["best"]["segm/MaP-IoU"] == 0.3 and s["best_iteration"] == 9
    assert s["evaluations"] == 3


def test_run_without_readable_outputs_fails_alone(tmp_path, caplog):
    out = tmp_path / "sw"
    args = sweep_args(out, grid=["--grid", "STANDIN.NO_METRICS=1,0"])
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: no_metrics-1"):
        sweep.main(args)
    rows = read_csv(out / "results.csv")
    assert [(r["name"], r["status"]) for r in rows] == [
        ("no_metrics-1", "failed"),
        ("no_metrics-0", "done"),
    ]
    assert "no_metrics-1: no metrics.json" in caplog.text
