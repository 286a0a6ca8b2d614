"""benchmarks/_common.py helpers."""

from __future__ import annotations

import pytest
from _common import comma_choices


def test_comma_choices_keeps_order_and_drops_blanks():
    assert comma_choices(" bf16, fp32,,", ("fp32", "bf16", "auto"), "--precision") == [
        "bf16",
        "fp32",
    ]


def test_comma_choices_names_the_flag_and_the_unknown_value():
    with pytest.raises(ValueError, match=r"--precision: \['fp16'\]"):
        comma_choices("fp32,fp16", ("fp32", "bf16"), "--precision")
