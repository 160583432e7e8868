"""Style registry: shipped styles load and validate; bad style files give clear errors."""

from __future__ import annotations

import json

import pytest

from facechain.errors import InputError
from facechain.styles import DEFAULT_STYLES_DIR, STYLE_FIELDS, load_style_file, load_styles

GOOD = {
    "name": "My style", "img": "", "model_id": None, "revision": None, "bin_file": None,
    "multiplier_style": 0.35, "multiplier_human": 0.95, "add_prompt_style": "red scarf, snow",
}


def _write(folder, stem, data):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


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
    # every shipped file holds exactly FaceChain's 8 fields
    for path in DEFAULT_STYLES_DIR.rglob("*.json"):
        assert set(json.loads(path.read_text())) == set(STYLE_FIELDS), path


def test_lookup_by_name_or_file_stem_and_family(tmp_path):
    reg = load_styles()
    assert reg.get("cyberpunk", "sd15").name == "Cyberpunk"
    assert reg.get("Cyberpunk", "sdxl").family == "sdxl"
    assert reg.get("Cyberpunk", "sd15").path.parent.name == "sd15"
    with pytest.raises(InputError, match=r"unknown style 'No such style'.*Available: \[.*Business suit"):
        reg.get("No such style", "sd15")
    with pytest.raises(InputError, match="is for sdxl base models"):
        reg.get("Mecha (LoRA)", "sd15")


def test_missing_field_is_named(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "multiplier_human"}
    path = _write(tmp_path / "sd15", "bad", bad)
    with pytest.raises(InputError, match=r"bad.json: missing field\(s\) \['multiplier_human'\]") as exc:
        load_styles([tmp_path])
    assert str(path) in str(exc.value)  # the message names the file by its full path


@pytest.mark.parametrize("field,value,msg", [
    ("multiplier_style", "0.3", "must be int or float"),
    ("multiplier_style", 3.0, "between 0 and 2"),
    ("add_prompt_style", None, "must be str"),
    ("name", " ", "'name' is empty"),
])
def test_wrong_values_refused(tmp_path, field, value, msg):
    _write(tmp_path, "x", {**GOOD, field: value})
    with pytest.raises(InputError, match=msg):
        load_styles([tmp_path])


def test_unknown_field_and_lora_without_file(tmp_path):
    _write(tmp_path / "a", "typo", {**GOOD, "multipler_style": 0.2})
    with pytest.raises(InputError, match=r"unknown field\(s\) \['multipler_style'\]"):
        load_styles([tmp_path / "a"])
    _write(tmp_path / "b", "hub", {**GOOD, "model_id": "owner/some-lora"})
    with pytest.raises(InputError, match="'bin_file' must name the LoRA file"):
        load_styles([tmp_path / "b"])


def test_duplicate_names_refused(tmp_path):
    _write(tmp_path / "sd15", "one", GOOD)
    _write(tmp_path / "sd15", "two", GOOD)
    with pytest.raises(InputError, match="defined twice"):
        load_styles([tmp_path])


def test_user_folder_style_with_local_lora(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(b"")
    path = _write(tmp_path, "ink", {**GOOD, "name": "Ink", "model_id": "loras/ink.safetensors"})
    style = load_style_file(path)
    assert style.family == "any" and style.has_lora
    assert style.lora_reference() == str(tmp_path / "loras" / "ink.safetensors")
    reg = load_styles([DEFAULT_STYLES_DIR, tmp_path])
    assert reg.get("Ink", "sdxl") == reg.get("ink", "sd15")  # usable on any base
