"""AUTOMATIC1111 weighting and prompts past 77 tokens (facechain.prompts), on tiny real-class pipelines."""

from __future__ import annotations

import pytest
import torch

from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
from facechain.errors import InputError
from facechain.prompts import PROMPT_WEIGHTING, Fragment, PromptEncoder, has_weighting, parse_weighted, plain_text


def _w(text):
    return [(f.text, f.weight) for f in parse_weighted(text)]


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.parametrize("weighting", PROMPT_WEIGHTING)
def test_plain_short_prompt_matches_diffusers(pipe, weighting):
    """No weights, under 77 tokens: exactly diffusers' own embeddings (same images as before), either weighting."""
    ours, theirs = PromptEncoder(pipe, weighting)("a red hat", "blurry"), _diffusers(pipe, "a red hat", "blurry")
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


def a1111_by_hand(tokenizer, text_encoder, pieces, penultimate):
    """AUTOMATIC1111's process_tokens written out for ``pieces`` [(text, weight)]: each piece tokenized on its
    own, 75 tokens a chunk (no comma in these prompts), [start] + tokens + [end] + pad, encoded, multiplied
    by the weights, rescaled to the chunk's original mean. Returns (embedding, first chunk's token ids)."""
    ids, weights = [], []
    for text, w in pieces:
        t = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids, weights = ids + t, weights + [w] * len(t)
    zs, rows = [], []
    for s in range(0, max(len(ids), 1), 75):
        chunk, cw = ids[s:s + 75], weights[s:s + 75]
        row = [tokenizer.bos_token_id] + chunk + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (75 - len(chunk))
        mult = torch.tensor([1.0] + cw + [1.0] * (76 - len(chunk)))
        with torch.no_grad():
            out = text_encoder(torch.tensor([row]), output_hidden_states=True)
        z = out.hidden_states[-2] if penultimate else out.last_hidden_state
        weighted = z * mult[None, :, None]
        zs.append(weighted * (z.mean() / weighted.mean()))
        rows.append(row)
    return torch.cat(zs, dim=1), rows[0]


# weights > 1 and < 1, nested, and a prompt of two chunks (the byte tokenizer: one token per character)
WEIGHTED = "a ((red:1.5) hat) and [blue] shoes " + "y" * 90 + " (end:0.7)"
WEIGHTED_PIECES = [("a ", 1.0), ("red", 1.5 * 1.1), (" hat", 1.1), (" and ", 1.0), ("blue", 1 / 1.1),
                   (" shoes " + "y" * 90 + " ", 1.0), ("end", 0.7)]
NEGATIVE = "((blurry)), (worst:2), plain"
NEGATIVE_PIECES = [("blurry", 1.1 * 1.1), (", ", 1.0), ("worst", 2.0), (", plain", 1.0)]


def test_a1111_rule_equals_a_hand_computation(pipe):
    """The default weighting is A1111's formula, per 77-token chunk, per text encoder (SDXL: each on its own,
    side by side; pooled = the second encoder's first chunk, unweighted)."""
    assert [(f.text, f.weight) for f in parse_weighted(WEIGHTED)] == [(t, round(w, 6)) for t, w in WEIGHTED_PIECES]
    kw = PromptEncoder(pipe)(WEIGHTED, NEGATIVE)
    sdxl = hasattr(pipe, "text_encoder_2")
    pairs = [(pipe.tokenizer, pipe.text_encoder)] + ([(pipe.tokenizer_2, pipe.text_encoder_2)] if sdxl else [])
    for key, pieces in (("prompt_embeds", WEIGHTED_PIECES), ("negative_prompt_embeds", NEGATIVE_PIECES)):
        parts = [a1111_by_hand(t, e, pieces, penultimate=sdxl) for t, e in pairs]
        want = torch.cat([z for z, _ in parts], dim=-1)
        if key == "negative_prompt_embeds":  # one chunk, padded to the prompt's two with the empty prompt's chunk
            empty = torch.cat([a1111_by_hand(t, e, [("", 1.0)], sdxl)[0] for t, e in pairs], dim=-1)
            want = torch.cat([want, empty], dim=1)
        assert kw[key].shape == want.shape == (1, 154, want.shape[-1])
        torch.testing.assert_close(kw[key], want, rtol=1e-5, atol=1e-6)  # the parser rounds weights to 6 digits
        if sdxl:
            with torch.no_grad():
                pooled = pipe.text_encoder_2(torch.tensor([parts[1][1]])).text_embeds
            pooled_key = {"prompt_embeds": "pooled_prompt_embeds", "negative_prompt_embeds": "negative_pooled_prompt_embeds"}
            assert torch.equal(kw[pooled_key[key]], pooled)
    assert not torch.allclose(kw["prompt_embeds"], PromptEncoder(pipe, "compel")(WEIGHTED, NEGATIVE)["prompt_embeds"][:, :154])


# compel's option = the encoder before A1111's rule was added (values from that code on these tiny models)
COMPEL_GOLDEN = {
    "sd15": {"prompt_embeds": [0.327411, 1.795571, 0.846789, 0.549588, 1.654835, 1.045033, 0.16118, -2.162301,
                               0.391182, 0.486724, -0.099398, -0.175206],
             "negative_prompt_embeds": [1.840863, 0.727764, 1.384232, 1.663478, 0.855412, 0.756186, 1.733397, -1.639744,
                                        -0.078604, 0.52563, 1.485601, -0.333204]},
    "sdxl": {"prompt_embeds": [-0.014666, 0.229143, -0.137141, -0.017906, 0.197346, 0.065391, -0.486009, -0.712757,
                               0.202126, 0.162942, 0.278684, -0.647099],
             "negative_prompt_embeds": [0.189707, -0.147786, -0.038643, 0.045955, 0.011687, -0.281266, -0.139118,
                                        -0.440049, -0.274341, 0.568111, 0.404126, -0.764524],
             "pooled_prompt_embeds": [-0.920666, -2.06706, -0.850465, -1.903579],
             "negative_pooled_prompt_embeds": [0.078646, -0.87818, 0.288106, 0.753897]},
}


def test_compel_option_reproduces_the_previous_encoder(pipe):
    prompt = "a (red:1.5) hat, [blue] ((shoes)) " + "x" * 100 + " (end:0.7)"
    kw = PromptEncoder(pipe, "compel")(prompt, "((blurry)), (worst:2)")
    golden = COMPEL_GOLDEN["sdxl" if hasattr(pipe, "text_encoder_2") else "sd15"]
    assert set(kw) == set(golden)
    assert kw["prompt_embeds"].shape[1] == 308  # compel's own chunking of this weighted prompt (4 x 77)
    for key, want in golden.items():
        t = kw[key]
        got = t[0, [1, 2, 3, 100], :3] if t.dim() == 3 else t[0, :4]
        torch.testing.assert_close(got.flatten(), torch.tensor(want), rtol=0, atol=2e-6)


def test_prompt_weighting_setting_is_checked(pipe):
    from facechain.generate.config import GenerateConfig

    with pytest.raises(InputError, match=r"prompt_weighting must be one of a1111, compel.*'a1112'"):
        PromptEncoder(pipe, "a1112")
    assert GenerateConfig(base_model="m", output_dir="o").prompt_weighting == "a1111"
    with pytest.raises(InputError, match="prompt_weighting"):
        GenerateConfig(base_model="m", output_dir="o", prompt_weighting="A1111")
    assert PromptEncoder(pipe).describe("(a:1.2)")["prompt_weighting"] == "a1111"


def test_stylize_reads_the_setting(tiny_sd15, style_images):
    """StylizeConfig.prompt_weighting reaches the engine's encoder; an engine is not reused across settings, and
    the inversion cache key tells the two apart only for a weighted prompt (an unweighted one encodes the same)."""
    from facechain.stylize import StylizeConfig
    from facechain.stylize.engine import Engine, prepare_image

    cfgs = {w: StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu", prompt_weighting=w)
            for w in PROMPT_WEIGHTING}
    a1111 = Engine(cfgs["a1111"])
    assert a1111.matches(cfgs["a1111"]) and not a1111.matches(cfgs["compel"])
    compel = Engine(cfgs["compel"])
    assert StylizeConfig().prompt_weighting == "a1111"
    conds = {name: e.conditioning("(head:1.4), portrait", "", (64, 64)) for name, e in (("a1111", a1111), ("compel", compel))}
    want = PromptEncoder(a1111.pipe, "a1111")("(head:1.4), portrait", "")["prompt_embeds"]
    assert torch.equal(conds["a1111"].cond, want)
    assert not torch.equal(conds["a1111"].cond, conds["compel"].cond)
    content = prepare_image(style_images["content"], None, 64, "content")
    assert a1111.inversion_key(content, "head", 4) == compel.inversion_key(content, "head", 4)
    assert a1111.inversion_key(content, "(head:1.4)", 4) != compel.inversion_key(content, "(head:1.4)", 4)


def test_a1111_rule_refuses_a_mean_zero_chunk(tiny_sd15):
    """A text encoder whose final LayerNorm is at its initial scale 1 / shift 0 gives mean-zero conditioning:
    A1111's rescaling would divide by 0, so a weighted chunk is an error that names the way out."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15)
    norm = pipe.text_encoder.final_layer_norm
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    enc = PromptEncoder(pipe)
    plain = enc("a red hat", "")  # no weights: nothing to rescale
    assert torch.equal(plain["prompt_embeds"], _diffusers(pipe, "a red hat", "")["prompt_embeds"])
    with pytest.raises(ValueError, match=r"mean 0 below.*prompt_weighting: compel"):
        enc("a (red:1.5) hat", "")
    assert PromptEncoder(pipe, "compel")("a (red:1.5) hat", "")["prompt_embeds"].isfinite().all()
