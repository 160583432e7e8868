"""One configuration model: the model-reference block declared once, one field helper, paths resolved
against the config file in one place."""

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from facechain.adapters.feedface.train import FeedFaceConfig
from facechain.adapters.repcontrolnet.merge import MergeConfig
from facechain.adapters.repcontrolnet.train import RepControlNetConfig
from facechain.config import (MODEL_REF_FIELDS, ModelRef, from_dict, model_ref, resolve_config_paths, save_config,
                              setting, to_dict)
from facechain.errors import InputError
from facechain.generate.config import GenerateConfig
from facechain.server.service import ServeConfig
from facechain.stylize.config import StylizeConfig
from facechain.template.config import TemplateConfig
from facechain.train.config import TrainConfig

pytestmark = pytest.mark.unit  # model-free

MISSING = dataclasses.MISSING
# each config's model-reference defaults, as they were before the block was shared (MISSING: required)
DEFAULTS = {
    TrainConfig: {"base_model": MISSING, "revision": "", "sub_path": "", "single_file_config": "", "allow_pickle": False},
    GenerateConfig: {"base_model": MISSING, "revision": None, "sub_path": None, "single_file_config": None,
                     "variant": "auto", "allow_pickle": False},
    TemplateConfig: {"base_model": "", "revision": None, "sub_path": None, "single_file_config": None,
                     "allow_pickle": False},
    StylizeConfig: {"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "revision": None, "sub_path": None,
                    "allow_pickle": False},
    ServeConfig: {"base_model": "ly261666/cv_portrait_model", "revision": "v2.0", "sub_path": "film/film"},
    FeedFaceConfig: {"base_model": MISSING, "revision": None, "sub_path": None, "single_file_config": None,
                     "allow_pickle": False},
    RepControlNetConfig: {"base_model": MISSING, "revision": None, "sub_path": None, "single_file_config": None,
                          "allow_pickle": False},
    MergeConfig: {"base_model": MISSING, "revision": None, "sub_path": None, "single_file_config": None,
                  "allow_pickle": False},
}


@pytest.mark.parametrize("cls", list(DEFAULTS), ids=lambda c: c.__name__)
def test_every_config_inherits_the_one_model_reference_block(cls):
    assert issubclass(cls, ModelRef)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, default in DEFAULTS[cls].items():
        assert hints[name] == MODEL_REF_FIELDS[name][0], (cls.__name__, name)  # one type: revision is str | None
        assert fields[name].default == default or (default is MISSING and fields[name].default is MISSING), name
        assert fields[name].metadata["help"]
    # declared in the shared block, never again in the config itself
    own = vars(cls).get("__annotations__", {})
    assert not set(own) & set(MODEL_REF_FIELDS), cls.__name__
    assert {n for n in MODEL_REF_FIELDS if n in fields} == set(DEFAULTS[cls])


def test_an_empty_model_reference_is_spelled_the_configs_own_way(tmp_path):
    """TrainConfig says '' for none (as every train_config.json has); the others say None. A value handed from
    one config to the next (a LoRA's train_config.json into generation) needs no `or None`."""
    train = TrainConfig(base_model="m", train_data_dir="d", output_dir="o", revision=None)
    assert (train.revision, train.sub_path, train.single_file_config) == ("", "", "")
    save_config(train, tmp_path / "train_config.json")
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert (saved["revision"], saved["sub_path"], saved["single_file_config"]) == ("", "", "")
    again = from_dict(TrainConfig, {k: v for k, v in saved.items() if k != "_type"})
    assert to_dict(again) == to_dict(train)
    gen = GenerateConfig(base_model=saved["base_model"], output_dir=Path("out"), revision=saved["revision"],
                         sub_path=saved["sub_path"])
    assert (gen.revision, gen.sub_path, gen.single_file_config) == (None, None, None)
    assert ServeConfig(revision="", sub_path="").revision is None and ServeConfig().revision == "v2.0"
    assert from_dict(TemplateConfig, {"template": "t.png", "output_dir": "o", "people": [{"lora_dir": "l"}],
                                      "revision": "v1", "sub_path": ""}).sub_path is None
    with pytest.raises(InputError, match=r"TrainConfig.revision: expected str or NoneType, got 3"):
        from_dict(TrainConfig, {"base_model": "m", "train_data_dir": "d", "output_dir": "o", "revision": 3})


def test_model_ref_gives_a_config_its_own_default_and_help_but_not_its_own_type():
    block = model_ref("base_model", "revision", revision="v9", base_model=setting("Only this model.", default="x"))
    fields = {f.name: f for f in dataclasses.fields(block)}
    assert set(fields) == {"base_model", "revision"} and fields["revision"].default == "v9"
    assert fields["base_model"].metadata["help"] == "Only this model." and fields["base_model"].default == "x"
    assert typing.get_type_hints(block)["revision"] == str | None
    with pytest.raises(TypeError, match="unknown or unselected"):
        model_ref("base_model", revision="v1")
    with pytest.raises(TypeError, match="unknown or unselected"):
        model_ref("base_model", "checkpoint")


def test_setting_records_help_and_what_the_field_holds():
    f = setting("A folder.", default=None, path=True)
    assert f.default is None and dict(f.metadata) == {"help": "A folder.", "path": "path"}
    f = setting("A model.", default="facechain", maybe_path=True, keywords=("facechain",), choices=["a"], flags=("--m",))
    assert dict(f.metadata) == {"help": "A model.", "path": "maybe", "keywords": ("facechain",), "choices": ("a",),
                                "flags": ("--m",)}
    assert setting("Many.", default_factory=list).default_factory is list
    with pytest.raises(ValueError):
        setting("Both.", path=True, maybe_path=True)


def test_paths_are_resolved_against_the_config_folder_as_each_field_says(tmp_path):
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "facechain").mkdir()  # a folder named like the built-in LoRA does not make it a path
    data = {"base_model": "models/base", "output_dir": "out", "lora_dir": "/abs/lora", "processed_dir": "~/p",
            "pose": "upper_body_front", "lcm_lora": "./lcm", "default_style_lora": "facechain",
            "style_dirs": ["mine", "/abs/styles"], "identity": {"photos": "me", "weights": "owner/repo"},
            "num_images": 2}
    out = resolve_config_paths(GenerateConfig, data, tmp_path)
    assert out["base_model"] == str(tmp_path / "models" / "base")  # names something here: a path
    assert out["output_dir"] == str(tmp_path / "out") and out["lora_dir"] == "/abs/lora"
    assert out["processed_dir"] == str(Path("~/p").expanduser())
    assert out["pose"] == "upper_body_front"  # a pose name, not a path
    assert out["lcm_lora"] == str(tmp_path / "lcm")  # ./ says it is a path
    assert out["default_style_lora"] == "facechain"
    assert out["style_dirs"] == [str(tmp_path / "mine"), "/abs/styles"]
    assert out["identity"] == {"photos": str(tmp_path / "me"), "weights": "owner/repo"}
    assert out["num_images"] == 2 and data["output_dir"] == "out"  # the input is left as it was
    # a list of blocks (a template's people) and the trainer's init LoRA alias
    tpl = resolve_config_paths(TemplateConfig, {"template": "t.png", "people": [{"lora_dir": "a", "identity": {"photos": "x"}}]},
                               tmp_path)
    assert tpl == {"template": str(tmp_path / "t.png"),
                   "people": [{"lora_dir": str(tmp_path / "a"), "identity": {"photos": str(tmp_path / "x")}}]}
    train = resolve_config_paths(TrainConfig, {"init_lora": "facechain", "train_data_dir": "p"}, tmp_path)
    assert train == {"init_lora": "facechain", "train_data_dir": str(tmp_path / "p")}
