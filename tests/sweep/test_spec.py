"""A sweep file with bad arms trains nothing: every arm is checked first, and every bad arm is reported at once,
one line each naming the sweep file, the arm and the key."""

from __future__ import annotations

from pathlib import Path

import yaml

from attnmel.cli import main as cli_main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_every_bad_arm_is_reported_before_any_training(tmp_path, capsys, monkeypatch):
    from attnmel.sweep import run as sweep_run

    sweep = tmp_path / "bad.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": {"synthetic": str(EXPERIMENTS / "synthetic.yaml")}, "seeds": [0, 1],
        "arms": [{"name": "good1", "overrides": {"loss.regulariser": "none"}},
                 {"name": "badmodel", "overrides": {"model.name": "resnet9000"}},
                 {"name": "badtype", "overrides": {"trainer.max_epochs": "abc"}},
                 {"name": "badreg", "overrides": {"loss.regulariser": "lesionn"}},
                 {"name": "good2", "overrides": {"loss.regulariser": "lesion"}}]}))
    monkeypatch.setattr(sweep_run, "execute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    out = tmp_path / "out"
    assert cli_main(["sweep", str(sweep), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"attnmel: error: {sweep}: 3 bad arm(s), nothing trained:"
    assert lines[1:] == [
        f"{sweep}: arms[badmodel]: unknown model.name 'resnet9000'; known: " + lines[1].split("known: ")[1],
        f"{sweep}: arms[badtype]: trainer.max_epochs must be an integer >= 1, got 'abc'",
        f"{sweep}: arms[badreg]: unknown loss.regulariser 'lesionn'; known: " + lines[3].split("known: ")[1],
    ]
    assert "attnmel" in lines[1].split("known: ")[1] and not out.exists()  # nothing trained, nothing written
