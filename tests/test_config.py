"""TEST.PRECISION resolution (nucdet.config.resolve_precision) on simulated CPUs, and the
/proc/cpuinfo reader it is fed from."""

from __future__ import annotations

import pytest

from nucdet.config import read_cpuinfo, resolve_precision

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
