"""Style registry: shipped styles load and validate; bad style files give clear errors."""

from __future__ import annotations

import json

import pytest

from facechain.errors import InputError
from facechain.generate.styles import DEFAULT_STYLES_DIR, OPTIONAL_FIELDS, STYLE_FIELDS, load_style_file, load_styles

GOOD = {
    "name": "My style", "img": "", "model_id": None, "revision": None, "bin_file": None,
    "multiplier_style": 0.35, "multiplier_human": 0.95, "add_prompt_style": "red scarf, snow",
}


def _write(folder, stem, data):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.unit
def test_shipped_styles_validate_and_cover_both_families():
    reg = load_styles()
    styles = list(reg)
    sd15_prompt_only = [s for s in styles if s.family == "sd15" and not s.has_lora]
    assert len(sd15_prompt_only) >= 12
    assert {s.family for s in styles} == {"sd15", "sdxl"}
    lora_styles = [s for s in styles if s.has_lora]
    assert len(lora_styles) >= 4 and all(s.bin_file.endswith(".safetensors") for s in lora_styles)
    # no A1111 weighting syntax in the shipped prompts
    assert not any("(" in s.add_prompt_style for s in styles)
    # every shipped file holds FaceChain's 8 fields (and at most our optional weight_rule)
    for path in DEFAULT_STYLES_DIR.rglob("*.json"):
        assert set(STYLE_FIELDS) <= set(json.loads(path.read_text())) <= set(STYLE_FIELDS) | set(OPTIONAL_FIELDS), path
    # the LoRA styles from FaceChain's SDXL set (FaceChain's ModelScope LoRAs) get FaceChain's SDXL strength;
    # every other style (SD1.5, the other SDXL LoRAs, a user's) keeps linear weights
    facechain_sdxl = {s.name for s in styles if s.weight_rule == "facechain_sdxl"}
    assert facechain_sdxl == {"Fields (LoRA)", "Mecha (LoRA)"}
    assert all(s.family == "sdxl" and s.model_id in ("slmodelscope/sdxl_style_loras", "damo/cv_sdxl_lora")
               for s in styles if s.name in facechain_sdxl)
    assert reg.get("Pixel art (LoRA)", "sdxl").weight_rule == "linear"


@pytest.mark.unit
def test_lookup_by_name_or_file_stem_and_family(tmp_path):
    reg = load_styles()
    assert reg.get("cyberpunk", "sd15").name == "Cyberpunk"
    assert reg.get("Cyberpunk", "sdxl").family == "sdxl"
    assert reg.get("Cyberpunk", "sd15").path.parent.name == "sd15"
    with pytest.raises(InputError, match=r"unknown style 'No such style'.*Available: \[.*Business suit"):
        reg.get("No such style", "sd15")
    with pytest.raises(InputError, match="is for sdxl base models"):
        reg.get("Mecha (LoRA)", "sd15")


@pytest.mark.unit
def test_missing_field_is_named(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "multiplier_human"}
    path = _write(tmp_path / "sd15", "bad", bad)
    with pytest.raises(InputError, match=r"bad.json: missing field\(s\) \['multiplier_human'\]") as exc:
        load_styles([tmp_path])
    assert str(path) in str(exc.value)  # the message names the file by its full path


@pytest.mark.unit
@pytest.mark.parametrize("field,value,msg", [
    ("multiplier_style", "0.3", "must be int or float"),
    ("multiplier_style", 3.0, "between 0 and 2"),
    ("add_prompt_style", None, "must be str"),
    ("name", " ", "'name' is empty"),
    ("weight_rule", "cubic", r"'weight_rule' is 'cubic'; choose one of \['facechain_sdxl', 'linear'\]"),
    ("weight_rule", None, "'weight_rule' must be str"),
])
def test_wrong_values_refused(tmp_path, field, value, msg):
    _write(tmp_path, "x", {**GOOD, field: value})
    with pytest.raises(InputError, match=msg):
        load_styles([tmp_path])


@pytest.mark.unit
def test_unknown_field_and_lora_without_file(tmp_path):
    _write(tmp_path / "a", "typo", {**GOOD, "multipler_style": 0.2})
    with pytest.raises(InputError, match=r"unknown field\(s\) \['multipler_style'\]"):
        load_styles([tmp_path / "a"])
    _write(tmp_path / "b", "hub", {**GOOD, "model_id": "owner/some-lora"})
    with pytest.raises(InputError, match="'bin_file' must name the LoRA file"):
        load_styles([tmp_path / "b"])


@pytest.mark.unit
def test_key_given_twice_and_bad_json_refused(tmp_path):
    path = tmp_path / "sd15" / "twice.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD)[:-1] + ', "multiplier_style": 1.5}')  # the last one used to win silently
    with pytest.raises(InputError, match=r"twice\.json: key 'multiplier_style' is given twice in one object"):
        load_styles([tmp_path])
    path.write_text('{"name": ')
    with pytest.raises(InputError, match=r"style file .*twice\.json could not be parsed"):
        load_style_file(path)


@pytest.mark.unit
def test_duplicate_names_refused(tmp_path):
    _write(tmp_path / "sd15", "one", GOOD)
    _write(tmp_path / "sd15", "two", GOOD)
    with pytest.raises(InputError, match="defined twice"):
        load_styles([tmp_path])


@pytest.mark.unit
def test_user_folder_style_with_local_lora(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(b"")
    path = _write(tmp_path, "ink", {**GOOD, "name": "Ink", "model_id": "loras/ink.safetensors"})
    style = load_style_file(path)
    assert style.family == "any" and style.has_lora
    assert style.lora_reference() == str(tmp_path / "loras" / "ink.safetensors")
    reg = load_styles([DEFAULT_STYLES_DIR, tmp_path])
    assert reg.get("Ink", "sdxl") == reg.get("ink", "sd15")  # usable on any base


# ---------------------------------------------------------------------------- FaceChain's SDXL strength


@pytest.fixture(scope="module")
def kohya_style(tiny_sdxl, tmp_path_factory):
    """A kohya-format style LoRA for the tiny SDXL (rank 4, alpha 2 on every module, so alpha matters), and
    its tensors."""
    from facechain import lora as lora_io
    from facechain.io import save_safetensors
    from facechain.testing import random_lora

    root = tmp_path_factory.mktemp("kohya_style")
    src = random_lora(tiny_sdxl, root / "src", seed=11, family="sdxl")
    lora, _ = lora_io.read_lora_file(src / lora_io.LORA_FILE, "sdxl")
    tensors = lora_io.to_kohya(lora, "sdxl", alpha=2.0)
    save_safetensors(root / "styles" / "ink.safetensors", tensors)
    return root / "styles", tensors


def _unet_weights(pipe) -> dict:
    """The UNet's base weights (the fused ones, under a peft LoRA layer) by module name."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in pipe.unet.state_dict().items()
            if "lora_" not in k}


def test_facechain_sdxl_rule_gives_facechains_fused_weights(tiny_sdxl, kohya_style, tmp_path):
    """FaceChain's SDXL path loads the style file with every tensor (up, down, alpha) times multiplier_style
    (0.55); the facechain_sdxl rule gives the same fused UNet as that, and the linear rule a ~3.3x stronger one."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import STYLE_ADAPTER, PortraitGenerator

    folder, tensors = kohya_style
    for rule in ("facechain_sdxl", "linear"):
        _write(folder, f"ink_{rule}", {**GOOD, "name": f"Ink {rule}", "model_id": "ink.safetensors",
                                       "multiplier_style": 0.55, "weight_rule": rule})
    cfg = GenerateConfig(base_model=str(tiny_sdxl), output_dir=tmp_path / "out", device="cpu", dtype="float32",
                         styles=["Business suit"], face_backend="dlib", detailer="off", fusion="off",
                         rank_candidates=False, fuse_loras=True)
    gen = PortraitGenerator(cfg)
    base = _unet_weights(gen.pipe)
    fused = {}
    for rule in ("facechain_sdxl", "linear"):
        style = load_style_file(folder / f"ink_{rule}.json")
        weights = gen._activate(style)
        fused[rule] = _unet_weights(gen.pipe)
        gen._deactivate(weights)
        assert weights[STYLE_ADAPTER] == pytest.approx(0.55 ** 3 if rule == "facechain_sdxl" else 0.55)
    # FaceChain's way: every tensor of the file times 0.55, loaded and merged at weight 1
    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl), dtype=torch.float32)
    ref.load_lora_weights({k: v * 0.55 for k, v in tensors.items()}, adapter_name="facechain")
    ref.fuse_lora(lora_scale=1.0)
    want = _unet_weights(ref)
    changed = [k for k in base if not torch.equal(want[k], base[k])]
    assert len(changed) > 10  # the style LoRA reached the UNet
    for k in changed:
        torch.testing.assert_close(fused["facechain_sdxl"][k], want[k], rtol=0, atol=1e-6)
    # the linear rule: the same update 1 / 0.55**2 = 3.3 times as large
    ratio = [float((fused["linear"][k] - base[k]).norm() / (want[k] - base[k]).norm()) for k in changed]
    assert min(ratio) == pytest.approx(0.55 ** -2, rel=1e-3) and max(ratio) == pytest.approx(0.55 ** -2, rel=1e-3)


def test_facechain_sdxl_weight_follows_the_files_tensors(kohya_style, tiny_sdxl, tmp_path):
    """m**3 with an alpha per module (kohya), m**2 without (a diffusers/peft file), refused when only some
    modules have one."""
    from facechain.io import save_safetensors
    from facechain.lora import LORA_FILE
    from facechain.generate.styles import facechain_sdxl_weight
    from facechain.testing import random_lora

    folder, tensors = kohya_style
    assert facechain_sdxl_weight(0.55, folder / "ink.safetensors") == pytest.approx(0.166375)
    plain = random_lora(tiny_sdxl, tmp_path / "plain", seed=12, family="sdxl") / LORA_FILE
    assert facechain_sdxl_weight(0.55, plain) == pytest.approx(0.3025)
    one_alpha_off = dict(tensors)
    del one_alpha_off[next(k for k in tensors if k.endswith(".alpha"))]
    save_safetensors(tmp_path / "mixed.safetensors", one_alpha_off)
    with pytest.raises(InputError, match="has an alpha on .* of its .* modules.*weight_rule linear"):
        facechain_sdxl_weight(0.55, tmp_path / "mixed.safetensors")
