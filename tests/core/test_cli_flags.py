"""One flag vocabulary: every command's output folder is --output-dir (old spelling --out, with a note), its
progress switch --no-progress (old: --quiet), and no parser reads a prefix as a flag."""

import argparse
import logging

import pytest

from facechain.cli import SUBCOMMANDS, build_parser, main

pytestmark = pytest.mark.unit  # model-free

# the arguments each command needs besides its output folder
REQUIRED = {
    "generate": [],
    "template": ["team.jpg"],
    "eval": ["generated", "--reference", "photos"],
    "stylize": ["--content", "c.png", "--style", "s.png"],
    "convert": ["model.bin"],
    "train-adapter": ["repcontrolnet", "--base-model", "m", "--data", "d"],
    "merge-repcontrolnet": ["adapter", "--base-model", "m"],
}
# commands whose output folder is a positional argument, or that write no output folder of their own
POSITIONAL_OUTPUT = {"preprocess", "train", "make-tiny-model"}
NO_OUTPUT = {"serve", "batch", "doctor"}  # serve: --workdir; batch: output_dir in JOBS.yaml; doctor prints
PROGRESS = {"preprocess": ["photos", "processed"], "train": ["m", "processed", "lora"],
            "train-adapter": ["feedface", "--base-model", "m", "--data", "d", "--output-dir", "o"], "batch": ["JOBS.yaml"]}


def _parsers(parser: argparse.ArgumentParser, path: str = "facechain"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _subcommand(name: str) -> argparse.ArgumentParser:
    return dict(_parsers(build_parser()))[f"facechain {name}"]


def _no_progress(args: argparse.Namespace) -> bool:
    return vars(args)["no_progress" if "no_progress" in vars(args) else "_no_progress"]


def _output(args: argparse.Namespace):
    return getattr(args, "output_dir", None) or getattr(args, "_output_dir", None)


def test_every_command_with_an_output_folder_flag_spells_it_output_dir():
    assert set(REQUIRED) | POSITIONAL_OUTPUT | NO_OUTPUT == set(SUBCOMMANDS)
    for path, parser in _parsers(build_parser()):
        visible = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--out" not in visible and "--quiet" not in visible, path
        name = path.split()[1] if " " in path else None
        if name in REQUIRED and path.count(" ") == (2 if name == "train-adapter" else 1):
            assert {"--output-dir", "--output_dir"} <= visible, path


@pytest.mark.parametrize("command", sorted(REQUIRED))
@pytest.mark.parametrize("flag", ["--output-dir", "--output_dir", "--out"])
def test_every_command_takes_output_dir_and_its_old_spelling(command, flag, caplog):
    with caplog.at_level(logging.WARNING):
        args = build_parser().parse_args([command, *REQUIRED[command], flag, "OUT"])
    assert _output(args) == "OUT"
    assert ("--out is now --output-dir" in caplog.text) == (flag == "--out")


def test_template_and_eval_out_are_no_longer_ambiguous(capsys):
    """`facechain template --out X` and `facechain eval --out X` failed with "ambiguous option: --out could
    match --output-dir, --output_dir"; through main's own per-command parser too."""
    for argv in (["template", "team.jpg", "--out", "X"], ["eval", "generated", "--reference", "photos", "--out", "X"]):
        assert build_parser().parse_args(argv).output_dir == "X"
    # main() builds only the asked command's parser: an abbreviation is an unknown flag there too, never a guess
    with pytest.raises(SystemExit) as exc:
        main(["template", "team.jpg", "--output", "X"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --output" in err and "ambiguous" not in err


@pytest.mark.parametrize("command", sorted(PROGRESS))
@pytest.mark.parametrize("flag", ["--no-progress", "--quiet"])
def test_one_no_progress_flag(command, flag, caplog):
    with caplog.at_level(logging.WARNING):
        args = build_parser().parse_args([command, *PROGRESS[command], flag])
    assert _no_progress(args) is True
    assert ("--quiet is now --no-progress" in caplog.text) == (flag == "--quiet")
    plain = build_parser().parse_args([command, *PROGRESS[command]])
    assert _no_progress(plain) is False


def test_no_parser_allows_abbreviations():
    parsers = dict(_parsers(build_parser()))
    assert {"facechain", "facechain generate", "facechain train-adapter feedface"} <= set(parsers)
    for path, parser in parsers.items():
        assert parser.allow_abbrev is False, path
    for argv in (["generate", "--num-im", "2"], ["train", "m", "d", "o", "--max-train", "3"],
                 ["merge-repcontrolnet", "a", "--base", "m", "--output-dir", "o"],
                 ["train-adapter", "feedface", "--base", "m"], ["--verb", "doctor"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


def test_merge_repcontrolnet_flags_come_from_its_config(capsys):
    from facechain.adapters.repcontrolnet.merge import MergeConfig
    from facechain.config import MODEL_REF_DEFAULT, settings_from_args

    parser = _subcommand("merge-repcontrolnet")
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {f"--{n.replace('_', '-')}" for n in MODEL_REF_DEFAULT} <= flags
    args = parser.parse_args(["adapter", "--base-model", "m", "--revision", "v2.0", "--sub_path", "film/film",
                              "--allow-pickle", "--output-dir", "merged"])
    assert settings_from_args(MergeConfig, args) == {"adapter_dir": "adapter", "base_model": "m", "revision": "v2.0", "sub_path": "film/film",
                                                     "allow_pickle": True, "output_dir": "merged"}
    assert main(["merge-repcontrolnet", "adapter", "--output-dir", "merged"]) == 1
    assert "required setting(s) ['base_model'] not given" in capsys.readouterr().err
