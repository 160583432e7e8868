"""Generate config, prompt building, pose maps and the CLI flags (no model needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from facechain.errors import InputError
from facechain.generate.config import GenerateConfig, load_generate_config
from facechain.generate.subject import build_prompt, subject_from_metadata

pytestmark = pytest.mark.unit  # model-free

REPO = Path(__file__).resolve().parents[2]


def test_subject_from_metadata_majority(tmp_path):
    rows = [{"file_name": f"{i:03d}.png", "text": t} for i, t in
            enumerate(["(<fcsks>:10), a handsome man", "<fcsks>, a mature man", "(<fcsks>:10), a handsome man"])]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert subject_from_metadata(tmp_path, "<x>") == ("<fcsks>", "a handsome man")
    assert subject_from_metadata(None, "<x>") == ("<x>", "a person")
    with pytest.raises(InputError, match="has no metadata.jsonl"):
        subject_from_metadata(tmp_path / "nope", "<x>")
    prompt = build_prompt("<fcsks>", "a handsome man", "(red scarf:1.3), snow", "smiling")
    assert prompt == "<fcsks>, a handsome man, (red scarf:1.3), snow, smiling"  # weights kept for the encoder


def test_config_relative_paths_and_overrides(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "lora").mkdir()
    path = tmp_path / "cfg" / "bob.yaml"
    path.write_text("base_model: owner/model\nlora_dir: ../lora\noutput_dir: out\nstyle_dirs: [../mystyles]\n"
                    "pose: upper_body_front\nnum_images: 2\n")
    cfg = load_generate_config(path, {"seed": 7, "output_dir": "elsewhere"}, base_dir=tmp_path)
    assert cfg.base_model == "owner/model"  # a hub id stays a hub id
    assert cfg.lora_dir == (tmp_path / "lora").resolve()
    assert cfg.style_dirs == [(tmp_path / "mystyles").resolve()]
    assert cfg.output_dir == (tmp_path / "elsewhere").resolve()
    assert cfg.pose == "upper_body_front" and cfg.seed == 7 and cfg.num_images == 2


@pytest.mark.parametrize("text,msg", [
    ("num_images: three", r"num_images: expected an integer, got 'three'"),
    ("fast: yes please", r"fast: expected true or false"),
    ("styles: Cyberpunk", r"styles: expected a list"),
    ("fusion: magic", r"fusion: must be one of \['auto', 'swapper', 'landmark', 'diir', 'off'\]"),
    ("num_image: 3", r"unknown setting\(s\) \['num_image'\]"),
    ("num_images: 20", r"num_images \(20\) is more than num_candidates \(10\)"),
    ("device: gpu", r"device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("face_backend: mtcnn", r"face_backend must be one of \['auto', 'dlib', 'insightface'\]"),
    ("depth_image: d.png", r"depth_image is set but depth is off"),
    ("height: 100", "height must be a positive multiple of 8"),
])
def test_config_field_errors(tmp_path, text, msg):
    path = tmp_path / "c.yaml"
    path.write_text(f"base_model: owner/model\noutput_dir: out\n{text}\n")
    with pytest.raises(InputError, match=msg):
        load_generate_config(path)


def test_shipped_configs_parse_and_document_every_field():
    import yaml

    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    example = load_generate_config(REPO / "configs" / "example.yaml")
    assert example.base_model == "ly261666/cv_portrait_model" and example.num_inference_steps == 40
    raw = yaml.safe_load((REPO / "configs" / "example.yaml").read_text())
    text = (REPO / "configs" / "example.yaml").read_text()
    assert fields - set(raw) <= {"negative_prompt"} and "# negative_prompt" in text
    demo = load_generate_config(REPO / "configs" / "demo.yaml")
    assert demo.base_model == str((REPO / "runs" / "tiny-sd15").resolve())
    assert demo.rank_candidates is False and demo.fusion == "off"


def test_pose_maps_drawn_in_openpose_colours(tmp_path):
    from facechain.generate.poses import COLORS, is_pose_map, load_pose, named_poses, skeleton_fraction

    assert {"upper_body_front", "full_body_standing"} <= set(named_poses())
    pose, photo = load_pose("upper_body_front", (64, 64))
    assert pose.shape == (64, 64, 3) and photo is None
    full = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(REPO / "poses" / "upper_body_front.png").convert("RGB"))
    assert is_pose_map(full) and skeleton_fraction(full) > 0.01
    # keypoint discs carry OpenPose's keypoint colours: nose (0) red, neck (1) orange
    assert tuple(full[int(0.33 * 512), 256]) == COLORS[0]
    assert tuple(full[int(0.52 * 512), 256]) == COLORS[1]


def test_pose_with_no_person_is_refused(tmp_path):
    from facechain.io import save_image
    from facechain.generate.poses import load_pose

    save_image(tmp_path / "black.png", np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(InputError, match="shows no person"):
        load_pose(str(tmp_path / "black.png"), (64, 64))
    with pytest.raises(InputError, match="neither an image file nor a pose name"):
        load_pose("no_such_pose", (64, 64))


def test_cli_flags_cover_every_field():
    import argparse

    from facechain.cli import generate as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--config", "x.yaml", "--num-images", "2", "--styles", "Cyberpunk", "Chef", "--no-rank-candidates",
                         "--fusion", "landmark", "--height", "512"])
    over = cli.overrides_from_args(args)
    assert over == {"num_images": 2, "styles": ["Cyberpunk", "Chef"], "rank_candidates": False, "fusion": "landmark",
                    "height": 512}
    flags = {a.dest.split(".")[0] for a in p._actions if a.help != argparse.SUPPRESS and not a.dest.startswith("_")} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(GenerateConfig)}
    # a nested block's fields are flags too, gathered back into the block
    args = p.parse_args(["--identity-adapter", "ip-adapter-faceid", "--identity_scale", "0.8", "--identity-photos", "me/"])
    assert cli.overrides_from_args(args) == {"identity": {"adapter": "ip-adapter-faceid", "scale": 0.8, "photos": "me/"}}


@pytest.mark.parametrize("command, cls", [("preprocess", "facechain.preprocess.config:PreprocessConfig"),
                                          ("train", "facechain.train.config:TrainConfig"),
                                          ("generate", "facechain.generate.config:GenerateConfig"),
                                          ("stylize", "facechain.stylize.config:StylizeConfig")])
def test_one_flag_bridge_for_every_command(command, cls):
    """Every command's flags come from its config dataclass through one bridge: each field is a flag
    in --kebab-case and --snake_case, its help is the field's help with the dataclass default, and
    every old name of a renamed setting still parses (hidden), under the new name."""
    import argparse
    import dataclasses
    import importlib
    import typing

    from facechain.config import renamed

    module, name = cls.split(":")
    cfg_cls = getattr(importlib.import_module(module), name)
    p = argparse.ArgumentParser()
    importlib.import_module(f"facechain.cli.{command}").add_arguments(p)
    by_dest = {}
    for action in p._actions:
        by_dest.setdefault(action.dest, []).append(action)
    for f in dataclasses.fields(cfg_cls):
        if f.name == "options":  # a mapping: stylize's --option KEY=VALUE
            continue
        nested = typing.get_type_hints(cfg_cls)[f.name]
        if dataclasses.is_dataclass(nested):  # a nested block (identity, diir): --<block>-<field> per field
            for sub in dataclasses.fields(nested):
                (action,) = by_dest[f"{f.name}.{sub.name}"]
                assert f"--{f.name}-{sub.name.replace('_', '-')}" in action.option_strings
                assert sub.metadata["help"][:20] in action.help and "(default:" in action.help
            continue
        visible = [a for a in by_dest[f.name] if a.help != argparse.SUPPRESS]
        assert len(visible) == 1, f.name
        action = visible[0]
        if action.option_strings:  # positionals (train's base_model, ...) excepted
            assert f"--{f.name.replace('_', '-')}" in action.option_strings and f"--{f.name}" in action.option_strings or "_" not in f.name
            assert action.help.startswith(f.metadata["help"][:20]) and ("(default:" in action.help or "(required" in action.help)
    for old, new in renamed(cfg_cls).items():
        hidden = [a for a in by_dest[new] if a.help == argparse.SUPPRESS]
        assert any(f"--{old.replace('_', '-')}" in a.option_strings for a in hidden), old


def test_old_setting_names_still_work_with_a_note(tmp_path, caplog):
    import argparse
    import logging

    from facechain.cli import stylize as cli
    from facechain.config import from_dict
    from facechain.preprocess.config import PreprocessConfig
    from facechain.train.config import TrainConfig

    with caplog.at_level(logging.WARNING):
        cfg = from_dict(TrainConfig, {"base_model": "m", "train_data_dir": "d", "output_dir": "o", "validation": "none",
                                      "validation_inference_steps": 3})
    assert (cfg.face_backend, cfg.validation_num_inference_steps) == ("none", 3)
    assert "setting 'validation' is now called 'face_backend'" in caplog.text
    assert from_dict(PreprocessConfig, {"backend": "dlib"}).face_backend == "dlib"
    with pytest.raises(InputError, match="'backend' and 'face_backend' are the same setting"):
        from_dict(PreprocessConfig, {"backend": "dlib", "face_backend": "auto"})
    (tmp_path / "old.yaml").write_text("base_model: m\noutput_dir: o\nsteps: 7\nrank: false\nfast_steps: 3\n")
    old = load_generate_config(tmp_path / "old.yaml")
    assert (old.num_inference_steps, old.rank_candidates, old.fast_num_inference_steps) == (7, False, 3)
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        args = p.parse_args(["--content", "c.png", "--style", "s.png", "--out", "o", "--model", "m", "--steps", "5",
                             "--subfolder", "sd", "--fast-lora", "lcm", "--lora", "a", "--lora", "b", "--no-fast"])
    cfg = cli.build_config(args)
    assert (cfg.base_model, cfg.num_inference_steps, cfg.sub_path, cfg.lcm_lora, cfg.loras, cfg.fast) == \
        ("m", 5, "sd", "lcm", ["a", "b"], False)
    assert args._output_dir == "o" and "--steps is now --num-inference-steps" in caplog.text
    assert "--out is now --output-dir" in caplog.text

def test_pose_photo_without_annotator_weights_names_the_fix(tmp_path):
    from skimage.data import astronaut

    from facechain.errors import ModelNotFoundError
    from facechain.io import save_image
    from facechain.generate.poses import load_pose

    save_image(tmp_path / "photo.png", astronaut())
    with pytest.raises(ModelNotFoundError, match=r"needs the OpenPose annotator weights .*--pose-annotator.*upper_body_front"):
        load_pose(str(tmp_path / "photo.png"), (64, 64), annotator=str(tmp_path / "no_annotator"), allow_pickle=True)


def test_example_config_generates_on_the_base_the_readme_quickstart_trains_on():
    """configs/example.yaml's base_model/revision/sub_path = the README quickstart's train_lora.sh base
    (a face LoRA only fits the base it was trained on)."""
    import re
    import shlex

    import yaml

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [ln for ln in readme.splitlines() if ln.strip().startswith("sh train_lora.sh ")]
    assert lines, "README has no `sh train_lora.sh ...` quickstart line"
    args = shlex.split(re.sub(r"\s+#.*$", "", lines[0]))[2:]
    model, revision, sub_path = args[:3]
    raw = yaml.safe_load((REPO / "configs" / "example.yaml").read_text(encoding="utf-8"))
    assert (raw["base_model"], raw["revision"], raw["sub_path"]) == (model, revision, sub_path)
    cfg = load_generate_config(REPO / "configs" / "example.yaml")
    assert (cfg.base_model, cfg.revision, cfg.sub_path) == (model, revision, sub_path)
    assert model == "ly261666/cv_portrait_model" and revision == "v2.0" and sub_path == "film/film"


def test_detailer_settings():
    with pytest.raises(InputError, match=r"detailer_strength must be in \(0, 1\]"):
        GenerateConfig(base_model="m", output_dir=Path("o"), detailer_strength=0)
    with pytest.raises(InputError, match="detailer"):
        GenerateConfig(base_model="m", output_dir=Path("o"), detailer="sometimes")
    cfg = GenerateConfig(base_model="m", output_dir=Path("o"))
    assert cfg.detailer == "auto" and cfg.detailer_strength == 0.4


@pytest.mark.parametrize("attribute,children", [
    ("a handsome man", True), ("a mature man", True), ("A Handsome Man", True),
    ("a beautiful woman", False), ("a mature woman", False), ("a boy, children", False), ("a girl, children", False),
    ("a person", False),
])
def test_adult_men_get_children_in_the_negative_prompt(attribute, children):
    from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
    from facechain.generate.subject import negative_for_subject

    out = negative_for_subject(DEFAULT_NEGATIVE_PROMPT, attribute)
    if children:
        assert out == DEFAULT_NEGATIVE_PROMPT + ", children"
        assert negative_for_subject(out, attribute) == out  # never twice
        assert negative_for_subject("", attribute) == "children"
    else:
        assert out == DEFAULT_NEGATIVE_PROMPT
