"""The metrics.json writer hook (cut back on resume) and the resumable best checkpoint, on a
real detectron2 TrainerBase with a scripted metric (fast and deterministic; the full trainer
is exercised in test_train_eval.py and test_resume.py). Reading and cutting metrics.json
itself: tests/io/test_metrics_json.py."""

from __future__ import annotations

import hashlib
import weakref

import pytest
import torch
from detectron2.engine import TrainerBase, hooks
from detectron2.utils.events import JSONWriter
from torch import nn

from nucdet.engine.checkpoint import NucleiCheckpointer
from nucdet.engine.hooks import MetricsWriter, ResumableBestCheckpointer
from nucdet.io.metrics_json import read_metrics


class _ScriptedTrainer(TrainerBase):
    """A real TrainerBase whose 'training step' sets the weights to the iteration number,
    so a saved model tells which iteration it came from."""

    def __init__(self, out_dir, values, metric, mode, period=1):
        super().__init__()
        self.model = nn.Linear(2, 1)
        self.values = values
        self.checkpointer = NucleiCheckpointer(
            self.model, str(out_dir), trainer=weakref.proxy(self)
        )
        self.best_file = out_dir / "model_best.pth"
        self.best_hashes: list[str | None] = []

        def evaluate():
            return {"segm": {"MaP-IoU": self.values[self.iter]}}

        self.register_hooks(
            [
                hooks.EvalHook(period, evaluate),
                ResumableBestCheckpointer(period, self.checkpointer, metric, mode=mode),
                hooks.PeriodicCheckpointer(self.checkpointer, 2),
                hooks.CallbackHook(after_step=lambda t: t._record()),
            ]
        )

    def _record(self):
        f = self.best_file
        self.best_hashes.append(hashlib.sha1(f.read_bytes()).hexdigest() if f.is_file() else None)

    def run_step(self):
        with torch.no_grad():
            self.model.weight.fill_(float(self.iter))


def _saved_iterations(hashes):
    """Indices (iterations) after which model_best.pth changed."""
    prev, out = None, []
    for i, h in enumerate(hashes):
        if h != prev:
            out.append(i)
        prev = h
    return out


@pytest.mark.parametrize(
    "mode,values,expected_saves,best",
    [
        # values[i] is the evaluation after step i; the one after training is at 6.
        # max: saved at 0 (first), 1 (0.5 > 0.2), 4 (0.7 > 0.5); a tie (2), drops (3, 6) not
        ("max", [0.2, 0.5, 0.5, 0.4, 0.7, None, 0.6], [0, 1, 4], (0.7, 4)),
        ("min", [3.0, 1.0, 2.0, 1.0, 0.5, None, 0.9], [0, 1, 4], (0.5, 4)),
    ],
)
def test_best_checkpoint_only_on_improvement(tmp_path, mode, values, expected_saves, best):
    t = _ScriptedTrainer(tmp_path, values, "segm/MaP-IoU", mode)
    t.train(0, 6)  # in-loop evaluations after steps 0..4, the last one after training
    assert len(t.best_hashes) == 6
    assert _saved_iterations(t.best_hashes) == expected_saves
    ckpt = torch.load(tmp_path / "model_best.pth", weights_only=False)
    assert ckpt["best_metric"] == {"segm/MaP-IoU": best[0]}
    assert ckpt["iteration"] == best[1]
    assert float(ckpt["model"]["weight"][0, 0]) == best[1]  # the weights of that iteration
    assert set(ckpt) == {"model", "iteration", "best_metric"}  # weights only, no optimizer
    # model_best never becomes the file --resume continues from
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


class _Crash(RuntimeError):
    pass


def test_best_state_survives_resume(tmp_path):
    # first run: evaluations 0.3, 0.8, 0.5, 0.6 after steps 0..3, then a crash in step 4;
    # its last checkpoint (model_0000003) must carry "best 0.8 at iteration 1"
    t1 = _ScriptedTrainer(tmp_path, [0.3, 0.8, 0.5, 0.6], "segm/MaP-IoU", "max")
    run_step = t1.run_step

    def crash_at_4():
        if t1.iter == 4:
            raise _Crash("killed")
        run_step()

    t1.run_step = crash_at_4
    with pytest.raises(_Crash):
        t1.train(0, 8)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    state = torch.load(tmp_path / "model_0000003.pth", weights_only=False)["trainer"]
    assert state["hooks"]["ResumableBestCheckpointer"] == {
        "metric": "segm/MaP-IoU",
        "mode": "max",
        "best_metric": 0.8,
        "best_iter": 1,
    }
    best_before = hashlib.sha1((tmp_path / "model_best.pth").read_bytes()).hexdigest()

    # resumed run: 0.7 after step 4 is below the restored best (a fresh hook would save it
    # as its first value); 0.9 after step 5 is saved; 0.1 after training is not
    t2 = _ScriptedTrainer(tmp_path, [None] * 4 + [0.7, 0.9, None, 0.1], "segm/MaP-IoU", "max")
    t2.checkpointer.resume_or_load("", resume=True)
    assert t2.iter == 3
    best_hook = t2._hooks[1]
    assert (best_hook.best_metric, best_hook.best_iter) == (0.8, 1)
    t2.train(t2.iter + 1, 7)
    assert t2.best_hashes[0] == best_before
    assert t2.best_hashes[1] != best_before
    ckpt = torch.load(tmp_path / "model_best.pth", weights_only=False)
    assert ckpt["best_metric"] == {"segm/MaP-IoU": 0.9} and ckpt["iteration"] == 5


def test_best_state_ignored_when_metric_changes(tmp_path):
    t1 = _ScriptedTrainer(tmp_path, [0.5, None, 0.5], "segm/MaP-IoU", "max")
    t1.train(0, 2)
    t2 = _ScriptedTrainer(tmp_path, [0.5, None, 0.5], "segm/MaP-IoU", "min")
    t2.checkpointer.resume_or_load("", resume=True)
    assert t2._hooks[1].best_metric is None
    t3 = _ScriptedTrainer(tmp_path, [0.5, None, 0.5], "segm/MaP-IoU", "max")
    t3.checkpointer.resume_or_load("", resume=True)
    assert t3._hooks[1].best_metric == 0.5


class _LoggingTrainer(TrainerBase):
    """A real TrainerBase logging one scalar per step through MetricsWriter/JSONWriter."""

    def __init__(self, out_dir, run, period=1, flush_period=0):
        super().__init__()
        self.run = run
        metrics = out_dir / "metrics.json"
        self.register_hooks(
            [
                MetricsWriter(
                    lambda start: [JSONWriter(str(metrics))],
                    period=period,
                    flush_period=flush_period,
                    metrics_file=metrics,
                )
            ]
        )

    def run_step(self):
        self.storage.put_scalar("run", float(self.run), smoothing_hint=False)


def _runs_by_iteration(path):
    return [(r["iteration"], r["run"]) for r in read_metrics(path)]


def test_metrics_writer_resume_and_fresh_start(tmp_path):
    metrics = tmp_path / "metrics.json"
    _LoggingTrainer(tmp_path, run=1).train(0, 4)
    assert _runs_by_iteration(metrics) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    # resumed at 2 (its checkpoint was after iteration 1): 2 and 3 are redone, not duplicated
    _LoggingTrainer(tmp_path, run=2).train(2, 5)
    assert _runs_by_iteration(metrics) == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)]
    # a new run in the same folder keeps the old history aside instead of appending to it
    _LoggingTrainer(tmp_path, run=3).train(0, 2)
    assert _runs_by_iteration(metrics) == [(0, 3), (1, 3)]
    assert len(read_metrics(tmp_path / "metrics.prev.json")) == 5


def test_metrics_writer_writes_at_checkpoints(tmp_path):
    # LOG_PERIOD 10 would write only at the end; checkpoints every 2 iterations force writes
    # after iterations 1 and 3, so a checkpoint never holds iterations missing on disk
    _LoggingTrainer(tmp_path, run=1, period=10, flush_period=2).train(0, 5)
    assert [it for it, _ in _runs_by_iteration(tmp_path / "metrics.json")] == [1, 3, 4]
    (tmp_path / "b").mkdir()
    _LoggingTrainer(tmp_path / "b", run=1, period=10, flush_period=0).train(0, 5)
    assert [it for it, _ in _runs_by_iteration(tmp_path / "b" / "metrics.json")] == [4]
