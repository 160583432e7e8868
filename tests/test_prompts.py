"""AUTOMATIC1111 weighting and prompts past 77 tokens (facechain.prompts), on tiny real-class pipelines."""

from __future__ import annotations

import pytest
import torch

from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
from facechain.prompts import Fragment, PromptEncoder, has_weighting, parse_weighted, plain_text


def _w(text):
    return [(f.text, f.weight) for f in parse_weighted(text)]


def test_a1111_emphasis_rules():
    assert _w("plain words, no syntax") == [("plain words, no syntax", 1.0)]
    assert _w("(a)") == [("a", 1.1)]
    assert _w("((a)), b") == [("a", 1.21), (", b", 1.0)]
    assert _w("[a]") == [("a", round(1 / 1.1, 6))]
    assert _w("(a:1.5) b") == [("a", 1.5), (" b", 1.0)]
    assert _w("((a:2) b)") == [("a", 2.2), (" b", 1.1)]  # nested: the inner weight times the outer 1.1
    assert _w("(a: 0.5 )") == [("a", 0.5)]
    assert _w(r"a \(literal\) \[x\] c:d") == [("a (literal) [x] c:d", 1.0)]
    assert _w("(open to the end") == [("open to the end", 1.1)]  # A1111: an open bracket applies to the end
    assert _w("stray) ]") == [("stray) ]", 1.0)]
    assert _w("(a:1.0) b") == [("a b", 1.0)]  # an explicit 1.0 is no weight
    # compel's own syntax is not read: + and quotes stay text
    assert _w('word+ "quoted"') == [('word+ "quoted"', 1.0)]
    assert plain_text("((masterpiece)), [blurry], (best quality:1.2), hires") == "masterpiece, blurry, best quality, hires"
    assert plain_text("(<fcsks>:10), a man") == "<fcsks>, a man"
    assert has_weighting("(a:1.2)") and not has_weighting("a, b")
    assert parse_weighted("") == [Fragment("", 1.0)]


def test_default_negative_prompt_is_facechains():
    frags = {f.text.strip(" ,"): f.weight for f in parse_weighted(DEFAULT_NEGATIVE_PROMPT)}
    assert frags["nsfw"] == 2.0 and frags["worst quality"] == 2.0 and frags["extra hands"] == 1.21
    assert DEFAULT_NEGATIVE_PROMPT.endswith("((extra legs)), ((extra hands))")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pipe(request, tiny_sd15, tiny_sdxl):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if request.param == "sd15":
        return StableDiffusionPipeline.from_pretrained(tiny_sd15)
    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)


def _diffusers(pipe, prompt, negative):
    if hasattr(pipe, "text_encoder_2"):
        pe, ne, po, npo = pipe.encode_prompt(prompt=prompt, device="cpu", num_images_per_prompt=1,
                                             do_classifier_free_guidance=True, negative_prompt=negative)
        return {"prompt_embeds": pe, "negative_prompt_embeds": ne, "pooled_prompt_embeds": po,
                "negative_pooled_prompt_embeds": npo}
    pe, ne = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    return {"prompt_embeds": pe, "negative_prompt_embeds": ne}


def test_plain_short_prompt_matches_diffusers(pipe):
    """No weights, under 77 tokens: exactly diffusers' own embeddings (same images as before)."""
    ours, theirs = PromptEncoder(pipe)("a red hat", "blurry"), _diffusers(pipe, "a red hat", "blurry")
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_long_prompt_is_not_truncated(pipe):
    """The tiny tokenizer has one token per character: 150 characters are two 77-token chunks, and a
    change past token 77 changes the embedding (diffusers alone cuts it off)."""
    enc = PromptEncoder(pipe)
    a, b = "x" * 140 + "aaaa", "x" * 140 + "bbbb"
    ea, eb = enc(a, "")["prompt_embeds"], enc(b, "")["prompt_embeds"]
    assert ea.shape[1] == 2 * 77
    assert not torch.equal(ea, eb)
    da, db = _diffusers(pipe, a, "")["prompt_embeds"], _diffusers(pipe, b, "")["prompt_embeds"]
    assert torch.equal(da, db)  # the old behaviour: the difference was truncated away
    # a long negative and a short prompt come out padded to the same length
    kw = enc("short", DEFAULT_NEGATIVE_PROMPT)
    assert kw["prompt_embeds"].shape == kw["negative_prompt_embeds"].shape
    assert kw["prompt_embeds"].shape[1] > 77
    info = enc.describe("short", DEFAULT_NEGATIVE_PROMPT)
    assert info["negative_prompt_chunks"] > 1 and info["negative_prompt_weighted"] and not info["prompt_weighted"]


def test_weights_change_the_embedding(pipe):
    enc = PromptEncoder(pipe)
    plain = enc("red hat", "")["prompt_embeds"]
    assert torch.equal(enc("(red:1.0) hat", "")["prompt_embeds"], plain)
    up = enc("(red:1.5) hat", "")["prompt_embeds"]
    assert not torch.equal(up, plain)
    assert torch.equal(enc("(red) hat", "")["prompt_embeds"], enc("(red:1.1) hat", "")["prompt_embeds"])


def test_pipeline_runs_on_the_embeddings(pipe):
    kw = PromptEncoder(pipe)("(a portrait:1.3), " + "y" * 100, DEFAULT_NEGATIVE_PROMPT)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = pipe(**kw, num_images_per_prompt=2, num_inference_steps=1, height=64, width=64, output_type="np",
               generator=gens)
    assert out.images.shape == (2, 64, 64, 3)
