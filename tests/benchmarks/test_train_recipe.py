"""benchmarks/train_recipe.py: the periodic-eval subset (``_common.stratified_subset``), the
wall-minute reading of log.txt, and the train_net command line it runs."""

import ast

import pytest
from _common import stratified_subset
from train_recipe import (
    SUBSET_NAME,
    eval_minutes,
    parse_args,
    train_command,
)


def images(counts: dict[str, int]) -> list[dict]:
    # file names in reverse order of creation: the subset must sort them itself
    out = []
    for mod, n in counts.items():
        out += [{"file_name": f"{mod}_{i:02d}.png", "modality": mod} for i in range(n)]
    return out[::-1]


def test_subset_keeps_rare_modalities_and_fills_with_the_common_one():
    ims = images({"brightfield": 3, "stained": 10, "fluorescence": 30})
    sub = stratified_subset(ims, 20)
    # by hand: brightfield round(20*3/43)=1, raised to min(3, 20//4=5) = 3;
    # stained round(20*10/43)=5 = max(5, 5); fluorescence fills the rest: 12
    names = [im["file_name"] for im in sub]
    assert names == (
        [f"brightfield_{i:02d}.png" for i in range(3)]
        + [f"stained_{i:02d}.png" for i in range(5)]
        + [f"fluorescence_{i:02d}.png" for i in range(12)]
    )


def test_subset_larger_than_the_set_is_the_whole_set():
    ims = images({"stained": 2, "fluorescence": 3})
    assert sorted(im["file_name"] for im in stratified_subset(ims, 50)) == sorted(
        im["file_name"] for im in ims
    )


def test_eval_minutes_count_from_the_first_start_through_a_resume(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "[11/22 14:00:00] detectron2 INFO: unrelated line\n"
        "[11/22 14:41:29] d2.engine.train_loop INFO: Starting training from iteration 0\n"
        "[11/22 14:46:42] d2.engine.train_loop INFO: Starting training from iteration 200\n"
        "[11/22 14:55:29] nucdet.evaluation.evaluator INFO: x segm: MaP-IoU=0.2878, AP=1\n"
        "[11/22 15:08:05] nucdet.evaluation.evaluator INFO: x bbox: AP=3\n"
        "[11/22 15:41:29] nucdet.evaluation.evaluator INFO: x segm: MaP-IoU=0.3560, AP=2\n"
    )
    # 14:41:29 -> 14:55:29 = 14 min; -> 15:41:29 = 60 min; the bbox line is not counted
    assert eval_minutes(log) == pytest.approx([14.0, 60.0])


def test_train_command_on_one_and_on_two_processes(tmp_path):
    sub, root, out = tmp_path / "sub.json", tmp_path / "img", tmp_path / "train"
    one = train_command(parse_args(["--num-gpus", "1"]), "py", sub, root, out)
    assert "--num-gpus" not in one and "--resume" not in one
    assert one[:4] == ["py", "train_net.py", "--config-file", parse_args([]).config_file]
    # the default: the recipe's one model on both cores
    assert train_command(parse_args([]), "py", sub, root, out)[4:6] == ["--num-gpus", "2"]
    two = train_command(parse_args(["--resume", "SOLVER.IMS_PER_BATCH", "4"]), "py", sub, root, out)
    assert two[4:7] == ["--resume", "--num-gpus", "2"]
    i = two.index("DATASETS.REGISTER")
    assert ast.literal_eval(two[i + 1]) == [[SUBSET_NAME, str(sub), str(root)]]
    assert two[two.index("DATASETS.TEST") + 1] == f"('{SUBSET_NAME}',)"
    assert two[two.index("OUTPUT_DIR") + 1] == str(out)
    # the user's overrides come last, so they win over the ones the script sets
    assert two[-2:] == ["SOLVER.IMS_PER_BATCH", "4"]
