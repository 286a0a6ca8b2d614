"""nucdet.config: the resolution steps (device, AMP, normalisation, INPUT.RANDOM_FLIP), each
run once from build_cfg to the trainer; TEST.PRECISION resolution (resolve_precision) on
simulated CPUs, and the /proc/cpuinfo reader it is fed from."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import TINY_CONFIG, TINY_OPTS, tiny_cfg
from detectron2.config import get_cfg

import nucdet.config
from nucdet.config import (
    ConfigError,
    add_nucdet_config,
    apply_normalization,
    build_cfg,
    is_resolved,
    read_cpuinfo,
    resolve_cfg,
    resolve_precision,
)

IMAGENET_MEAN = [103.53, 116.28, 123.675]
IMAGENET_STD = [57.375, 57.12, 58.395]


def _raw(**keys):
    """A config built without build_cfg (unresolved), INPUT keys set from ``keys``."""
    cfg = add_nucdet_config(get_cfg())
    for k, v in keys.items():
        setattr(cfg.INPUT, k, v)
    return cfg


def _stats(tmp_path, mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 3.0)) -> str:
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"mean": list(mean), "std": list(std)}))
    return str(path)


def test_apply_normalization(tmp_path):
    cfg = _raw()
    before = (list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
    apply_normalization(cfg)
    assert (list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)) == before
    cfg.INPUT.NORMALIZATION = "imagenet"
    cfg.freeze()
    apply_normalization(cfg)
    assert cfg.is_frozen() and list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(IMAGENET_MEAN)
    cfg = _raw(NORMALIZATION="dataset", FORMAT="RGB", DATASET_STATS=_stats(tmp_path))
    apply_normalization(cfg)
    assert list(cfg.MODEL.PIXEL_MEAN) == [30.0, 20.0, 10.0]  # BGR file -> RGB model
    assert list(cfg.MODEL.PIXEL_STD) == [3.0, 2.0, 1.0]
    apply_normalization(cfg)  # from the source keys only: a second run changes nothing
    assert list(cfg.MODEL.PIXEL_MEAN) == [30.0, 20.0, 10.0]
    cfg.INPUT.DATASET_STATS = str(tmp_path / "none.json")
    with pytest.raises(FileNotFoundError, match="DATASET_STATS"):
        apply_normalization(cfg)
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [1, 2], "std": [1, 1, 1]}))
    cfg.INPUT.DATASET_STATS = str(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="bad.json.*3 values"):
        apply_normalization(cfg)
    cfg.INPUT.NORMALIZATION = "zscore"
    with pytest.raises(ValueError, match="NORMALIZATION"):
        apply_normalization(cfg)


def test_normalization_resolved():
    # build_cfg (behind tiny_cfg) resolves it for every entry point ...
    cfg = tiny_cfg("INPUT.NORMALIZATION", "imagenet")
    assert is_resolved(cfg)
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(IMAGENET_MEAN)
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(IMAGENET_STD)
    # ... and resolve_cfg (the trainer's) does for a config built otherwise.
    raw = _raw(NORMALIZATION="imagenet")
    assert not is_resolved(raw)
    out = resolve_cfg(raw)
    assert out is raw and is_resolved(raw)  # not frozen: resolved in place
    # detectron2's default mean is ImageNet's already; its default std is 1.
    assert list(get_cfg().MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert list(out.MODEL.PIXEL_STD) == pytest.approx(IMAGENET_STD)


def test_amp_kept_on_cpu_off_elsewhere(caplog):
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True")
    cfg.freeze()
    assert resolve_cfg(cfg) is cfg  # the CPU trains in bf16 (tests/engine/test_amp.py)
    assert cfg.SOLVER.AMP.ENABLED
    with caplog.at_level(logging.INFO, logger="nucdet.config"):
        built = tiny_cfg("SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "mps")
    assert not built.SOLVER.AMP.ENABLED
    assert "mixed precision needs CUDA or the CPU, off on mps" in caplog.text
    raw = _raw()
    raw.MODEL.DEVICE, raw.SOLVER.AMP.ENABLED = "mps", True
    raw.freeze()
    out = resolve_cfg(raw)
    assert out is not raw and out.is_frozen()
    assert raw.SOLVER.AMP.ENABLED and not out.SOLVER.AMP.ENABLED  # input left alone
    assert resolve_cfg(out) is out  # nothing left to change


def test_each_step_runs_once_from_build_cfg_to_the_trainer(tmp_path, monkeypatch, registered):
    """train_net.py's validate (build_cfg) then the Trainer (resolve_cfg again): the stats
    file is read once; a clone stays resolved; a changed source key resolves again."""
    import train_net
    from nucdet.engine.launch import parse_args
    from nucdet.engine.trainer import Trainer

    reads = []
    read = nucdet.config.read_dataset_stats
    counted = lambda p: reads.append(str(p)) or read(p)  # noqa: E731
    monkeypatch.setattr(nucdet.config, "read_dataset_stats", counted)
    stats = _stats(tmp_path)
    opts = ["INPUT.NORMALIZATION", "dataset", "INPUT.DATASET_STATS", stats]
    args = parse_args(
        ["--config-file", str(TINY_CONFIG), *TINY_OPTS, *opts, "OUTPUT_DIR", str(tmp_path)]
    )
    cfg = train_net.validate(args)
    assert reads == [stats] and cfg.is_frozen() and is_resolved(cfg)
    trainer = Trainer(cfg)
    assert reads == [stats]
    assert list(trainer.cfg.MODEL.PIXEL_MEAN) == [10.0, 20.0, 30.0]
    assert list(trainer.model.pixel_mean.flatten()) == [10.0, 20.0, 30.0]
    assert resolve_cfg(cfg.clone()) is not None and reads == [stats]
    again = cfg.clone()
    again.defrost()
    (tmp_path / "other").mkdir()
    again.INPUT.DATASET_STATS = _stats(tmp_path / "other", mean=(1.0, 2.0, 3.0))
    assert not is_resolved(again)
    assert list(resolve_cfg(again).MODEL.PIXEL_MEAN) == [1.0, 2.0, 3.0] and len(reads) == 2
    # The YAML a run writes does not carry the mark: read back, it is resolved again.
    (tmp_path / "dumped.yaml").write_text(cfg.dump())
    assert "resolved" not in cfg.dump()
    assert list(build_cfg(tmp_path / "dumped.yaml").MODEL.PIXEL_MEAN) == [10.0, 20.0, 30.0]
    assert len(reads) == 3


@pytest.mark.parametrize("flip", ["none", "vertical"])
def test_random_flip_is_never_silently_ignored(flip):
    # nucdet's mapper flips by INPUT.AUG.*: any other value of detectron2's key is an error
    with pytest.raises(ConfigError, match=rf"INPUT.RANDOM_FLIP '{flip}'.*HFLIP_PROB"):
        tiny_cfg("INPUT.RANDOM_FLIP", flip)
    # detectron2's default ("not set") is accepted, and detectron2's own mapper reads it
    assert tiny_cfg().INPUT.RANDOM_FLIP == "horizontal"
    cfg = tiny_cfg("INPUT.RANDOM_FLIP", flip, "INPUT.MAPPER", "DatasetMapper")
    assert cfg.INPUT.RANDOM_FLIP == flip


# A Zen 3 EPYC's flags (AVX2, no AVX-512, no AMX): bf16 would be emulated there.
AMD_ZEN3 = frozenset(
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
    "fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl "
    "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 "
    "sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy "
    "cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext invpcid_single ssbd ibrs ibpb "
    "stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb "
    "sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr rdpru wbnoinvd arat npt nrip_save "
    "umip pku ospke vaes vpclmulqdq rdpid fsrm".split()
)
# A Sapphire Rapids Xeon (AMX tiles) and a Zen 4 EPYC (AVX-512 BF16, no AMX).
XEON_AMX = AMD_ZEN3 | {"avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
AMD_ZEN4 = AMD_ZEN3 | {"avx512f", "avx512bw", "avx512_bf16"}


def test_auto_on_simulated_cpus():
    assert resolve_precision("auto", "cpu", AMD_ZEN3) == "fp32"
    assert resolve_precision("auto", "cpu", AMD_ZEN3 | {"amx_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", XEON_AMX) == "bf16"
    assert resolve_precision("auto", "cpu", AMD_ZEN4) == "bf16"
    assert resolve_precision("auto", "cpu", frozenset()) == "fp32"  # no /proc/cpuinfo
    # avx512f alone (Skylake, Ice Lake) has no bf16 dot products.
    assert resolve_precision("auto", "cpu", AMD_ZEN3 | {"avx512f", "avx512bw"}) == "fp32"


def test_auto_on_cuda_follows_the_gpu_not_the_cpu():
    assert resolve_precision("auto", "cuda", AMD_ZEN3, cuda_bf16=True) == "bf16"
    assert resolve_precision("auto", "cuda:1", XEON_AMX, cuda_bf16=False) == "fp32"


def test_explicit_precision_is_kept_and_bad_values_name_the_key():
    # An explicit choice is obeyed, even where bf16 is emulated (slow, but what was asked).
    assert resolve_precision("bf16", "cpu", AMD_ZEN3) == "bf16"
    assert resolve_precision("fp32", "cpu", XEON_AMX) == "fp32"
    with pytest.raises(ValueError, match="TEST.PRECISION.*'fp16'"):
        resolve_precision("fp16", "cpu", XEON_AMX)


def test_read_cpuinfo(tmp_path):
    text = "".join(
        f"processor\t: {i}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
        f"flags\t\t: {' '.join(sorted(AMD_ZEN3))}\n\n"
        for i in range(2)
    )
    (tmp_path / "cpuinfo").write_text(text)
    model, flags = read_cpuinfo(str(tmp_path / "cpuinfo"))
    assert model == "AMD EPYC 7B13" and flags == AMD_ZEN3
    assert read_cpuinfo(str(tmp_path / "missing")) == ("", frozenset())
