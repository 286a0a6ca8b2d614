"""The demo (``make demo``) runs the repository's scripts in the current directory: there it
finds what it runs; anywhere else it stops before running anything, naming what is missing.
The demo itself (8 minutes of training) is not run here."""

from __future__ import annotations

import pytest
from conftest import REPO

from nucdet.tools import demo


def test_demo_finds_its_scripts_and_config_in_the_repository():
    demo.check_checkout(REPO, demo.CONFIG)  # no error


def test_demo_elsewhere_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train_net.py").write_text("")
    with pytest.raises(SystemExit) as e:
        demo.main(["--output", str(tmp_path / "out")])
    assert str(e.value) == (
        f"demo: {tmp_path} has no infer.py, {demo.CONFIG}: run the demo from the nucdet "
        "repository (make demo)"
    )
    assert not (tmp_path / "out").exists()
