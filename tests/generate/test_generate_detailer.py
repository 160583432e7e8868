"""The face detailer inside generation: it runs while the face LoRA is active, with each candidate's
prompt/negative/seed, its report goes into manifest.json, and ranking keeps a small face it re-drew
(FaceChain's min face size would drop every face the detailer's auto mode details)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from facechain.testing import random_lora


def _small_face_photo(size: int = 512, paste_px: int = 200) -> np.ndarray:
    """The astronaut's head pasted small: below ranking's min_face_frac, the detailer's auto threshold."""
    from facechain import samples

    return samples.pasted_head(paste_px, size)


@pytest.fixture(scope="module")
def face_lora(tiny_sd15, tmp_path_factory):
    return random_lora(tiny_sd15, tmp_path_factory.mktemp("face_lora"), seed=1)


@pytest.fixture(scope="module")
def small_face():
    return _small_face_photo()


def _cfg(tiny, tmp_path, **kw):
    from facechain.generate import GenerateConfig

    base = {"base_model": str(tiny), "output_dir": tmp_path / "out", "num_candidates": 2, "num_images": 1, "batch_size": 2,
                "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32",
                "styles": ["Business suit"], "face_backend": "dlib", "seed": 11}
    base.update(kw)
    return GenerateConfig(**base)


class _PhotoSampler:
    """Stands in for the text-to-image call (the tiny model draws no faces): returns the given photos,
    so the real detailer then runs on real faces with the generator's real (LoRA-carrying) pipeline."""

    def __init__(self, pipe, photos):
        self.scheduler = pipe.scheduler
        self.photos = photos

    def __call__(self, prompt_embeds, num_images_per_prompt=1, **kw):
        class Out:
            pass

        out = Out()
        n = prompt_embeds.shape[0] * num_images_per_prompt
        out.images = [Image.fromarray(self.photos[i % len(self.photos)]) for i in range(n)]
        return out


def _lora_fused(pipe) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(m.merged for m in pipe.unet.modules() if isinstance(m, BaseTunerLayer))


def test_detailer_runs_with_the_face_lora_active_and_each_candidates_prompt_and_seed(
        tiny_sd15, face_lora, small_face, dlib_analyzer, tmp_path, monkeypatch):
    import facechain.generate.detailer as detailer
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    cfg = _cfg(tiny_sd15, tmp_path, lora_dir=face_lora)
    gen = PortraitGenerator(cfg, analyzer=dlib_analyzer)
    gen.control_pipe = _PhotoSampler(gen.pipe, [small_face])
    calls = []
    real = detailer.detail_faces

    def spy(pipe, image, analyzer, prompt, negative_prompt="", cfg=None, seed=0, conditioning=None):
        calls.append({"pipe": pipe, "fused": _lora_fused(pipe), "prompt": prompt, "negative": negative_prompt,
                      "seed": seed, "cfg": cfg, "analyzer": analyzer, "conditioning": conditioning})
        return real(pipe, image, analyzer, prompt, negative_prompt, cfg, seed, conditioning)

    monkeypatch.setattr(detailer, "detail_faces", spy)
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", gen.family)
    batch = gen.generate(style, ("<fcsks>", "a beautiful woman"))
    assert [c["seed"] for c in calls] == [11, 12]
    assert all(c["pipe"] is gen.pipe and c["fused"] for c in calls)  # face LoRA fused while detailing
    assert not _lora_fused(gen.pipe)  # ... and unfused after
    assert all(c["prompt"] == batch.prompt and c["negative"] == batch.negative_prompt for c in calls)
    assert all(c["analyzer"] is dlib_analyzer for c in calls)
    # the detailer gets the job's weighted, untruncated embeddings (FaceChain's negative prompt is > 77 tokens)
    from facechain.prompts import PromptEncoder

    want = PromptEncoder(gen.pipe)(batch.prompt, batch.negative_prompt)
    for c in calls:
        assert set(c["conditioning"]) == set(want)
        assert all(torch.equal(c["conditioning"][k], want[k]) for k in want)
    assert batch.settings["prompt_encoding"]["negative_prompt_chunks"] > 1
    dcfg = calls[0]["cfg"]
    assert dcfg.mode == "auto" and dcfg.strength == 0.4 and dcfg.guidance_scale == cfg.guidance_scale
    assert dcfg.num_inference_steps == 3  # job's 2 steps raised so 0.4 x steps runs one step
    for c in batch.candidates:
        assert c.detailer[0]["detailed"] is True and c.detailer[0]["seed"] == c.seed
        out = np.asarray(c.image)
        assert out.shape == small_face.shape and np.abs(out.astype(int) - small_face.astype(int)).max() > 0
    assert batch.settings["detailer"]["mode"] == "auto" and batch.settings["detailer"]["steps"] == 3

    # off: the detailer does not run and the candidates are the sampled images
    off = PortraitGenerator(_cfg(tiny_sd15, tmp_path, detailer="off"))
    off.control_pipe = _PhotoSampler(off.pipe, [small_face])
    calls.clear()
    batch = off.generate(style, ("<fcsks>", "a person"))
    assert calls == [] and off.analyzer is None and batch.candidates[0].detailer is None
    np.testing.assert_array_equal(np.asarray(batch.candidates[0].image), small_face)


def test_generator_makes_its_analyzer_lazily(tiny_sd15, small_face, tmp_path, monkeypatch):
    import facechain.face as face
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    made = []
    real = face.get_analyzer
    monkeypatch.setattr(face, "get_analyzer", lambda name="auto", **kw: made.append(name) or real(name, **kw))
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, detailer="always", num_candidates=1))
    assert made == [] and gen.analyzer is None
    gen.control_pipe = _PhotoSampler(gen.pipe, [small_face])
    batch = gen.generate(load_styles([DEFAULT_STYLES_DIR]).get("Business suit", gen.family), ("<fcsks>", "a person"))
    assert made == ["dlib"] and batch.candidates[0].detailer[0]["detailed"] is True


class _Candidates:
    """A candidate source for run_job: real photos with a given detailer report each."""

    load_seconds = 0.0

    def __init__(self, photos, reports):
        self.photos, self.reports = photos, reports

    def generate(self, style, subject):
        from facechain.generate.pipeline import Candidate, StyleBatch

        cands = [Candidate(i, 100 + i, Image.fromarray(p), r) for i, (p, r) in enumerate(zip(self.photos, self.reports))]
        return StyleBatch(style, f"{subject[0]}, {subject[1]}", "", {}, cands, 0.0, {})


def test_ranking_keeps_a_small_face_the_detailer_redrew(small_face, dlib_analyzer, tiny_sd15, tmp_path):
    """Full-body poses: the face is below min_face_frac. Undetailed it is dropped (FaceChain's rule);
    detailed it is usable, scored and kept; the detailer's report is in manifest.json."""
    from facechain.generate import run_job
    from facechain.io import save_image

    processed = tmp_path / "processed"
    from facechain import samples

    astro = samples.astronaut()
    save_image(processed / "000.png", astro[0:300, 80:380])
    (processed / "metadata.jsonl").write_text(json.dumps({"file_name": "000.png", "text": "<fcsks>, a woman"}) + "\n")
    detailed = [{"bbox": [1, 2, 3, 4], "face_px": 87.0, "detailed": True, "reason": None, "crop": [0, 0, 160],
                 "crop_size": 160, "working_size": 512, "seed": 100}]
    skipped = [{"bbox": [1, 2, 3, 4], "face_px": 87.0, "detailed": False, "reason": "off", "crop": None,
                "crop_size": None, "working_size": None, "seed": None}]
    cfg = _cfg(tiny_sd15, tmp_path, processed_dir=processed, rank_candidates=True, num_candidates=3, num_images=2)
    result = run_job(cfg, generator=_Candidates([small_face, small_face, small_face], [detailed, skipped, None]))
    style = result.manifest["styles"][0]
    assert [k["index"] for k in style["kept"]] == [0]
    assert [(d["index"], d["reason"].split(":")[0]) for d in style["dropped"]] == [(1, "face too small"),
                                                                                  (2, "face too small")]
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    cands = written["styles"][0]["candidates"]
    assert cands[0]["detailer"] == detailed and cands[1]["detailer"] == skipped and cands[2]["detailer"] is None
    assert cands[0]["score"] is not None and cands[0]["face_size"] < cfg.min_face_frac * 512


def test_generation_uses_facechains_children_rule_for_adult_men(tiny_sd15, tmp_path):
    from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, detailer="off", num_candidates=1))
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", gen.family)
    gen.control_pipe = _PhotoSampler(gen.pipe, [np.zeros((64, 64, 3), np.uint8)])
    assert gen.generate(style, ("<fcsks>", "a mature man")).negative_prompt == DEFAULT_NEGATIVE_PROMPT + ", children"
    assert gen.generate(style, ("<fcsks>", "a beautiful woman")).negative_prompt == DEFAULT_NEGATIVE_PROMPT
