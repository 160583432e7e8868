"""The typed hand-offs between stages: the processed set, the trained LoRA, the generation manifest and
a person's workspace. Each reads what the stage writes today (and wrote before), writes the same JSON
back, and refuses a bad folder with one error naming it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facechain.config import save_config
from facechain.errors import InputError
from facechain.generate.manifest import GenerationManifest, KeptImage, StyleRecord
from facechain.io import save_image, write_json
from facechain.preprocess.artifact import (
    PhotoEntry,
    PreprocessReport,
    ProcessedPhoto,
    ProcessedSet,
    ReferenceCrop,
    read_metadata,
    write_processed_set,
)
from facechain.preprocess.config import PreprocessConfig
from facechain.train.artifact import TrainedLora, TrainProgress, read_train_config
from facechain.train.config import TrainConfig
from facechain.workspace import PersonWorkspace

pytestmark = pytest.mark.unit  # model-free

# report.json as preprocessing wrote it before the typed writer (two inputs: one kept with a mask and a
# high-resolution reference crop, one rejected)
OLD_REPORT = {
    "backend": "dlib", "caption": "<fcsks>, a person", "caption_note": "the dlib face backend gives no gender or age",
    "kept": 1, "rejected": 1,
    "reference": {"output": "000.png", "input": "a.jpg", "quality": 812.5, "rule": "detector_score x blur",
                  "hires": "reference/hires.png", "hires_size": 768},
    "config": {"size": 512, "mask": "auto"},
    "entries": [
        {"input": "a.jpg", "status": "kept", "reason": None, "detail": None, "output": "000.png",
         "scores": {"rotation": 0, "roll": 1.5, "face_size": 180.2, "detector_score": 1.25, "blur": 650.0,
                    "mask": "grabcut", "identity_similarity": 1.0},
         "timings": {"load": 0.01, "total": 0.2}},
        {"input": "b.txt", "status": "rejected", "reason": "not_an_image", "detail": "file type '.txt' is not a photo",
         "output": None, "scores": {}, "timings": {"total": 0.0}},
    ],
}

# manifest.json of facechain generate (one style made and one failed), as run_job wrote it before the typed writer
OLD_MANIFEST = {
    "base_model": {"ref": "tiny", "path": "/models/tiny", "family": "sd15"},
    "face_lora": "/runs/me/lora", "identity_adapter": None,
    "subject": {"trigger": "<fcsks>", "attribute": "a woman"},
    "template": {"file": "000.png", "reason": "report.json detector_score x blur (sharpness) = 812.5",
                 "fusion_source": "reference/hires.png", "fusion_source_size": 768},
    "fusion": {"method": "landmark", "strength": 1.0, "diir": None, "restore": None},
    "ranking": {"on": True, "backend": "dlib", "usable_face_frac": [0.1, 0.9], "small_face_kept_when_detailed": True},
    "upscale": {"method": "off", "factor": 1},
    "styles": [
        {"style": "Chef", "style_file": "styles/sd15/chef.json", "prompt": "<fcsks>, a woman, chef",
         "negative_prompt": "blurry", "multipliers": {"human": 0.95, "style": None}, "adapters": {"face": 1.0},
         "style_lora": None, "settings": {"steps": 2},
         "kept": [{"file": "chef_00.png", "index": 1, "seed": 43, "score": 0.61},
                  {"file": "chef_01.png", "index": 0, "seed": 42, "score": None}],
         "candidates": [{"index": 0, "seed": 42, "file": "candidates/chef_000.png", "score": None, "kept": True,
                         "dropped": None, "fused": False, "faces": 1, "face_size": 80.0, "detailer": None,
                         "diir": None}],
         "dropped": [], "timings": {"generate_s": 1.5, "postprocess_s": 0.1, "seconds_per_candidate": 0.75}},
        {"style": "Snow", "error": "style LoRA x could not be downloaded"},
    ],
    "timings": {"template_s": 0.2, "load_s": 3.0, "total_s": 6.0},
    "failed": [{"item": "Snow", "error": "style LoRA x could not be downloaded"}],
    "config": {"styles": ["Chef", "Snow"]},
}


def _processed_folder(folder: Path, n: int = 2, masks: bool = True) -> Path:
    """A processed set written by the writer preprocessing uses, with real PNGs."""
    rng = np.random.default_rng(0)
    photos = []
    for i in range(n):
        name = f"{i:03d}.png"
        save_image(folder / name, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        if masks:
            save_image(folder / "masks" / name, np.full((32, 32), 255, np.uint8))
        photos.append(ProcessedPhoto(name, "<fcsks>, a woman" if i else "<fcsks>, a person"))
    entries = [PhotoEntry(input=f"p{i}.jpg", status="kept", output=p.file,
                          scores={"detector_score": 1.0, "blur": 10.0 * i}) for i, p in enumerate(photos)]
    report = PreprocessReport(entries=entries, backend="dlib", caption="<fcsks>, a woman", kept=n, rejected=0,
                              reference=ReferenceCrop("001.png", "p1.jpg", 10.0, "detector_score x blur",
                                                      hires_note="reference_size is 0"))
    write_processed_set(folder, photos, report, PreprocessConfig())
    return folder


def test_processed_set_reads_what_the_writer_wrote(tmp_path):
    folder = _processed_folder(tmp_path / "p", n=3)
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png", "002.png", "masks", "metadata.jsonl",
                                                        "preprocess_config.json", "report.json"]
    first = (folder / "metadata.jsonl").read_text().splitlines()[0]
    assert first == '{"file_name": "000.png", "text": "<fcsks>, a person"}'
    processed = ProcessedSet.read(folder)
    assert [p.file for p in processed.photos] == ["000.png", "001.png", "002.png"]
    assert [p.mask for p in processed.photos] == ["masks/000.png", "masks/001.png", "masks/002.png"]
    assert processed.photos[2].scores == {"detector_score": 1.0, "blur": 20.0}
    assert processed.caption_majority() == "<fcsks>, a woman"  # two of three photos
    assert processed.reference.output == "001.png" and processed.reference.hires is None
    assert processed.path(processed.photos[0]) == folder / "000.png" and processed.has_masks
    processed.check_photos()
    (folder / "masks" / "001.png").unlink()
    assert [p.mask for p in ProcessedSet.read(folder).photos] == ["masks/000.png", None, "masks/002.png"]


def test_reports_of_today_and_of_older_folders_read_and_write_the_same_json(tmp_path):
    write_json(tmp_path / "report.json", OLD_REPORT)
    report = PreprocessReport.read(tmp_path / "report.json")
    assert report.to_dict() == OLD_REPORT
    assert json.dumps(report.to_dict()) == json.dumps(OLD_REPORT)  # the same keys in the same order
    assert report.reference.hires == "reference/hires.png" and [e.output for e in report.kept_entries()] == ["000.png"]
    no_hires = {**OLD_REPORT, "reference": {**OLD_REPORT["reference"], "hires": None, "hires_size": None,
                                            "hires_note": "reference_size is 0"}}
    write_json(tmp_path / "report.json", no_hires)
    assert json.dumps(PreprocessReport.read(tmp_path / "report.json").to_dict()) == json.dumps(no_hires)
    # a report from before the reference crop and the caption note: its entries alone
    write_json(tmp_path / "report.json", {"entries": [{"input": "a.jpg", "status": "kept", "output": "000.png",
                                                       "scores": {"detector_score": 1.0, "blur": 9.0}}]})
    old = PreprocessReport.read(tmp_path / "report.json")
    assert old.reference is None and old.kept_entries()[0].scores["blur"] == 9.0


def test_processed_set_errors_name_the_folder_the_rule_and_the_fix(tmp_path, caplog):
    with pytest.raises(InputError, match=r"processed_dir .*nope does not exist.*facechain preprocess"):
        ProcessedSet.read(tmp_path / "nope", "processed_dir")
    folder = _processed_folder(tmp_path / "p")
    meta = folder / "metadata.jsonl"
    good = meta.read_text()
    meta.unlink()
    with pytest.raises(InputError, match=r"has no metadata.jsonl.*Run `facechain preprocess"):
        ProcessedSet.read(folder)
    for text, message in [("", "holds no training photos .*report.json"),
                          ("not json\n", r"line 1 is not a \{\"file_name\""),
                          ('{"file_name": "../x.png", "text": "a"}\n', "no absolute path, no '..'"),
                          ('{"file_name": "000.png", "text": 1}\n', r"text \(the caption\) must be a string")]:
        meta.write_text(text)
        with pytest.raises(InputError, match=message):
            ProcessedSet.read(folder)
    meta.write_bytes(b'{"file_name": "000.png", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match="is not UTF-8 text"):
        ProcessedSet.read(folder)
    meta.write_text('{"file_name": "000.png", "text": "  "}\n')
    with pytest.raises(InputError, match="holds no captions"):
        ProcessedSet.read(folder).caption_majority()
    meta.write_text(good + '{"file_name": "007.png", "text": "x"}\n')
    with pytest.raises(InputError, match=r"line 3 names 007.png, which is not in"):
        ProcessedSet.read(folder).check_photos()
    meta.write_text(good)
    (folder / "report.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert ProcessedSet.read(folder).report is None  # every reader of a set can do without its report
    assert "report.json could not be read as JSON" in caplog.text
    write_json(folder / "report.json", {"entries": [{"input": "a", "scores": "high"}]})
    with pytest.raises(InputError, match=r"report.json is not a report `facechain preprocess` wrote: .*scores"):
        PreprocessReport.read(folder / "report.json")


def test_metadata_records_with_sub_folders_read(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "images/a.png", "text": "a person", "extra": 1}\n\n')
    assert read_metadata(tmp_path / "metadata.jsonl") == [ProcessedPhoto("images/a.png", "a person")]


def _trained(folder: Path, **cfg) -> Path:
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    save_config(TrainConfig(base_model="models/sd15", train_data_dir="p", output_dir=str(folder), **cfg),
                folder / "train_config.json")
    return folder


def test_trained_lora_reads_its_train_config(tmp_path):
    folder = _trained(tmp_path / "lora", revision="v2.0", rank=8)
    lora = TrainedLora.read(folder)
    assert lora.config == TrainConfig(base_model="models/sd15", train_data_dir="p", output_dir=str(folder),
                                      revision="v2.0", rank=8)
    assert lora.base_model_ref() == ("models/sd15", "v2.0", None)  # an unset sub_path is None
    assert lora.weights == folder / "pytorch_lora_weights.safetensors" and lora.kohya is None
    assert lora.config_path == folder / "train_config.json" and lora.log_path == folder / "train_log.jsonl"
    (folder / "pytorch_lora_weights_kohya.safetensors").write_bytes(b"kohya")
    assert TrainedLora.read(folder).kohya == folder / "pytorch_lora_weights_kohya.safetensors"
    # a config saved before a setting was renamed reads under the new name
    saved = json.loads((folder / "train_config.json").read_text())
    saved["validation"] = saved.pop("face_backend")
    (folder / "train_config.json").write_text(json.dumps({**saved, "validation": "dlib"}))
    assert read_train_config(folder / "train_config.json").face_backend == "dlib"


def test_trained_lora_errors_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(InputError, match=r"lora_dir .*nope does not exist.*facechain train"):
        TrainedLora.read(tmp_path / "nope")
    folder = _trained(tmp_path / "lora")
    (folder / "pytorch_lora_weights.safetensors").unlink()
    assert not TrainedLora.is_trained(folder)
    with pytest.raises(InputError, match=r"has no pytorch_lora_weights.safetensors: training has not finished"):
        TrainedLora.read(folder)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    assert TrainedLora.is_trained(folder)
    saved = json.loads((folder / "train_config.json").read_text())
    (folder / "train_config.json").write_text(json.dumps({**saved, "rank": "four"}))
    with pytest.raises(InputError, match=r"train_config.json is not a train_config.json facechain can read: .*rank"):
        TrainedLora.read(folder)
    (folder / "train_config.json").write_text(json.dumps({**saved, "colour": "red"}))
    with pytest.raises(InputError, match=r"unknown setting.*colour"):
        TrainedLora.read(folder)
    (folder / "train_config.json").unlink()
    with pytest.raises(InputError, match="train_config.json does not exist"):
        TrainedLora.read(folder)


def test_train_progress_from_the_log_of_a_run_still_going(tmp_path):
    assert (TrainProgress.read(tmp_path).step, TrainProgress.read(tmp_path).total) == (0, None)  # not started
    rows = [{"event": "start", "step": 0, "max_train_steps": 400}, {"step": 1, "loss": 0.5, "lr": 1e-4},
            {"event": "checkpoint", "step": 1, "score": None}, {"event": "resume", "step": 1, "max_train_steps": 600},
            {"step": 2, "loss": 0.25, "lr": 1e-4}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')  # torn
    progress = TrainProgress.read(tmp_path)
    assert (progress.step, progress.total, progress.losses) == (2, 600, [(1, 0.5), (2, 0.25)])


def test_generation_manifest_reads_and_writes_the_same_json(tmp_path):
    write_json(tmp_path / "manifest.json", OLD_MANIFEST)
    manifest = GenerationManifest.read(tmp_path)
    assert json.dumps(manifest.to_dict()) == json.dumps(OLD_MANIFEST)  # the same keys in the same order
    assert manifest.reference["file"] == "000.png" and manifest.ranking.backend == "dlib"
    assert [(s.style, k) for s, k in manifest.kept_images()] == [
        ("Chef", KeptImage("chef_00.png", 1, 43, 0.61)), ("Chef", KeptImage("chef_01.png", 0, 42, None))]
    assert manifest.styles[1] == StyleRecord("Snow", error="style LoRA x could not be downloaded")
    manifest.write(tmp_path / "again")
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (tmp_path / "manifest.json").read_bytes()
    # a manifest with only its ranking block (eval reads nothing else)
    write_json(tmp_path / "manifest.json", {"ranking": {"on": True, "backend": "dlib"}})
    partial = GenerationManifest.read(tmp_path)
    assert (partial.ranking.on, partial.ranking.backend, partial.styles) == (True, "dlib", [])


def test_generation_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"has no manifest.json, so it is not the output folder"):
        GenerationManifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"manifest.json could not be read as JSON"):
        GenerationManifest.read(tmp_path)
    write_json(tmp_path / "manifest.json", ["styles"])
    with pytest.raises(InputError, match=r"manifest.json is not a manifest `facechain generate` wrote: .*mapping"):
        GenerationManifest.read(tmp_path)
    write_json(tmp_path / "manifest.json", {"styles": [{"style": "Chef", "kept": [{"file": "a.png", "index": "one",
                                                                                   "seed": 1}]}]})
    with pytest.raises(InputError, match=r"styles\[0\]\.kept\[0\]\.index: expected an integer"):
        GenerationManifest.read(tmp_path)


def test_person_workspace_spells_out_the_folders(tmp_path):
    ws = PersonWorkspace(tmp_path / "alice")
    assert [ws.photos, ws.processed, ws.lora, ws.portraits, ws.template, ws.eval] == [
        tmp_path / "alice" / n for n in ("photos", "processed", "lora", "portraits", "template", "eval")]
    assert not ws.is_trained
    with pytest.raises(InputError, match=r"the person's lora folder .*alice/lora does not exist"):
        ws.trained_lora()
    with pytest.raises(InputError, match=r"the person's processed folder .*alice/processed does not exist"):
        ws.processed_set()
    _trained(ws.lora)
    _processed_folder(ws.processed)
    assert ws.is_trained and ws.trained_lora().base_model_ref() == ("models/sd15", None, None)
    assert len(ws.processed_set().photos) == 2


def test_the_readers_import_without_torch():
    code = ("import sys; import facechain.preprocess.artifact, facechain.train.artifact, facechain.generate.manifest, "
            "facechain.workspace; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
