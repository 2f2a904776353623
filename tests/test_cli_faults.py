"""The command line under faults: OS errors, console markup, overrides after options, unknown arguments,
``data synth`` over an existing set (issue 13, from tests/test_robustness.py)."""

from __future__ import annotations

import pytest

from attnmel.cli import main as cli_main
from attnmel.errors import AttnMelError
from tests._faults import EXPERIMENTS, one_line_error, tiny_overrides


# -- 2. operating-system errors ------------------------------------------------------------------
def test_out_dir_that_is_a_file_is_one_line(synthetic_root, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert cli_main(["train", "--config", str(EXPERIMENTS / "synthetic.yaml"),
                     *tiny_overrides(synthetic_root, blocker, "r")]) == 2
    err = one_line_error(capsys)
    assert str(blocker) in err



def test_os_error_message_names_the_path():
    from attnmel.cli import os_error_message

    assert os_error_message(OSError(28, "No space left on device", "/x/metrics.json")) == \
        "/x/metrics.json: No space left on device"



# -- 8 and 9. console markup in paths; overrides after options --------------------------------------
def test_markup_in_a_dataset_root_is_printed_verbatim(make_isic2017_tree, tmp_path):
    import io

    from rich.console import Console

    from attnmel.data.check import run_check

    root = make_isic2017_tree(tmp_path / "x[/bold]y")
    buf = io.StringIO()
    assert run_check("isic2017", root, console=Console(file=buf, width=400)) == 0
    assert str(root) in "".join(buf.getvalue().split())  # printed as written (the title folds the path)


def test_sweep_takes_overrides_after_options_and_prints_markup_verbatim(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {{isic2017: {EXPERIMENTS / 'isic2017.yaml'}}}\nseeds: [0]\narms:\n  - name: a\n")
    out = tmp_path / "out[/bold]"
    missing = tmp_path / "no[/red]data"
    # The Makefile's `make sweep DATASET=isic2017 ROOT=...` command line: an override after the options.
    code = cli_main(["sweep", str(sweep), "--dataset", "isic2017", "--out", str(out), f"data.root={missing}"])
    err = capsys.readouterr().err
    assert code == 1  # the one run fails: its data root does not exist
    assert str(missing) in err.replace("\n", "") and "out[/bold]" in err.replace("\n", "")
    assert "data root not found" in (out / "s" / "a" / "seed0" / "error.txt").read_text() or \
        str(missing) in (out / "s" / "a" / "seed0" / "error.txt").read_text()


def test_unknown_arguments_are_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", "x.yaml", "--dataset", "isic2017", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err



def test_data_synth_over_an_existing_set_needs_force(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["data", "synth", "--out", str(out), "--n", "10", "--size", "32"]
    assert cli_main(args) == 0
    mine = out / "my_notes.txt"
    mine.write_text("keep me")
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "--force" in one_line_error(capsys) and mine.read_text() == "keep me"
    assert cli_main([*args, "--force"]) == 0


def test_verbose_flag_works_before_and_after_the_subcommand(tmp_path, capsys):
    from attnmel.cli import parse_args

    assert parse_args(["evaluate", "RUN", "-v"]).verbose is True
    assert parse_args(["-v", "evaluate", "RUN"]).verbose is True
    assert parse_args(["data", "check", "--dataset", "x", "--root", "r", "--verbose"]).verbose is True
    assert parse_args(["evaluate", "RUN"]).verbose is False
    # -v after the subcommand really turns on tracebacks: the error is raised instead of printed in one line.
    with pytest.raises(AttnMelError, match="run folder not found"):
        cli_main(["evaluate", str(tmp_path / "nope"), "-v"])
    assert cli_main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in one_line_error(capsys)
