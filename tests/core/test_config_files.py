"""Config files as hostile input: a YAML alias bomb is refused before any value is built, a key given twice is an
error naming it (and its lines), and no config error prints more than an excerpt of a value."""

import pytest

from facechain.cli import main
from facechain.config import from_dict, load_mapping
from facechain.configfile import MAX_ALIAS_VALUES, load_yaml
from facechain.errors import InputError, excerpt
from facechain.train.config import TrainConfig

pytestmark = pytest.mark.unit  # model-free


def alias_bomb(levels: int = 7, width: int = 9) -> str:
    """A ~270-byte value whose aliases stand for width**levels strings (4.8 million here)."""
    parts = ['&a [' + ", ".join(['"lol"'] * width) + ']']
    for prev, name in zip("abcdefghij", "bcdefghijk"[:levels - 1]):
        parts.append(f"&{name} [" + ", ".join([f"*{prev}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


def test_alias_bomb_is_refused_with_a_short_message(tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(f"validation_prompt: {alias_bomb()}\n")
    assert cfg.stat().st_size < 400
    with pytest.raises(InputError, match=r"bomb\.yaml: its aliases \(\*name\) expand to [\d,]+ more values, over the "
                                         r"limit of 10,000") as exc:
        load_mapping(cfg)
    assert len(str(exc.value)) < 400
    # through the command line: one short line, exit 1 (it printed 39 MB before)
    assert main(["train", "--config", str(cfg), "m", str(tmp_path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 10,000" in err and len(err) < 400


def test_aliases_within_the_limit_and_merge_keys_still_work():
    data = load_yaml("defaults: &d {rank: 4, seed: 2}\nrun:\n  <<: *d\n  rank: 8\nlist: &l [1, 2]\nagain: *l\n", "c")
    assert data["run"] == {"rank": 8, "seed": 2} and data["again"] == [1, 2]
    # at the limit and just over it: a list of 99 numbers (100 values with the list) aliased 100 times adds 10,000
    shared = "&s [" + ", ".join(["0"] * 99) + "]"
    under = load_yaml(f"a: {shared}\nb: [" + ", ".join(["*s"] * (MAX_ALIAS_VALUES // 100)) + "]\n", "c")
    assert len(under["b"]) == MAX_ALIAS_VALUES // 100
    with pytest.raises(InputError, match="over the limit"):
        load_yaml(f"a: {shared}\nb: [" + ", ".join(["*s"] * (MAX_ALIAS_VALUES // 100 + 1)) + "]\n", "c")


def test_values_their_tag_cannot_hold_are_input_errors():
    for text in ("a: 2001-13-45\n", "a: !!int x\n", "a: !!float " + "x" * 10_000 + "\n"):
        with pytest.raises(InputError, match=r"^c could not be parsed: a value is not what it looks like") as exc:
            load_yaml(text, "c")
        assert len(str(exc.value)) < 400


def test_an_alias_inside_its_own_value_is_refused():
    with pytest.raises(InputError, match=r"c: line 1: an alias stands for a value that holds it"):
        load_yaml("a: &a [1, *a]\n", "c")


def test_duplicate_yaml_key_names_the_key_and_both_lines(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("rank: 4\nseed: 1\nrank: 8\n")
    with pytest.raises(InputError, match=r"train\.yaml: key 'rank' is given twice in one mapping, on line 1 and line 3"):
        load_mapping(cfg)
    assert main(["train", "--config", str(cfg), "m", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "key 'rank' is given twice" in capsys.readouterr().err
    nested = tmp_path / "nested.yaml"
    nested.write_text("options:\n  gamma: 0.5\n  temperature: 1.0\n  gamma: 0.75\n")
    with pytest.raises(InputError, match=r"key 'gamma' is given twice in one mapping, on line 2 and line 4"):
        load_mapping(nested)
    flow = tmp_path / "flow.yaml"
    flow.write_text("options: {gamma: 0.5, gamma: 0.75}\n")
    with pytest.raises(InputError, match=r"key 'gamma' is given twice in one mapping, on line 1;"):
        load_mapping(flow)


def test_duplicate_json_key_is_refused(tmp_path):
    cfg = tmp_path / "train.json"
    cfg.write_text('{"rank": 4, "options": {"a": 1, "a": 2}}')
    with pytest.raises(InputError, match=r"train\.json: key 'a' is given twice in one object"):
        load_mapping(cfg)
    cfg.write_text('{"rank": 4, "seed": 1}')
    assert load_mapping(cfg) == {"rank": 4, "seed": 1}


def test_config_errors_show_an_excerpt_of_a_long_value():
    long = "x" * 100_000
    for data in ({"validation_prompt": [long]}, {"rank": long}, {"target_modules": [[long] * 1000]},
                 {long: 1}, {"lr_scheduler": long}):
        with pytest.raises(InputError) as exc:
            from_dict(TrainConfig, {"base_model": "m", "train_data_dir": "d", "output_dir": "o", **data})
        assert len(str(exc.value)) < 1500, (list(data), len(str(exc.value)))
    assert excerpt("short") == "'short'" and excerpt([1, 2]) == "[1, 2]"
    assert len(excerpt([[["a" * 50] * 50] * 50] * 50)) <= 120


def test_mixed_key_types_are_listed_not_a_traceback():
    with pytest.raises(InputError, match=r"unknown setting\(s\) \[1, 'zz'\]"):
        from_dict(TrainConfig, {"base_model": "m", "train_data_dir": "d", "output_dir": "o", 1: "a", "zz": 2})


def test_a_config_path_that_is_a_device_or_not_text(tmp_path):
    with pytest.raises(InputError, match=r"config file /dev/zero is a character device, not a regular file"):
        load_mapping("/dev/zero")
    (tmp_path / "c.yaml").write_bytes(b"rank: 4\n\xff\xfe")
    with pytest.raises(InputError, match=r"c\.yaml is not UTF-8 text \(invalid start byte at byte 8\)"):
        load_mapping(tmp_path / "c.yaml")
