"""The real CLIP tokenizer (49,408 tokens, built from open-clip-torch's copy of CLIP's BPE file) and real
token and chunk counts: the shipped style prompts, FaceChain's negative prompt, A1111's chunking."""

from __future__ import annotations

import pytest
import torch

from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
from facechain.generate.subject import build_prompt, negative_for_subject
from facechain.prompts import PROMPT_WEIGHTING, PromptEncoder, a1111_chunks, parse_weighted, plain_text
from facechain.testing import CLIP_VOCAB_SIZE, clip_bpe_file, make_clip_tokenizer


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_tok")
    make_clip_tokenizer(folder)
    return folder


def test_known_ids(clip_tokenizer_dir):
    """Ids as in openai/clip-vit-large-patch14's vocab.json (SD1.5's and SDXL's tokenizer)."""
    import json

    from transformers import CLIPTokenizer

    vocab = json.loads((clip_tokenizer_dir / "vocab.json").read_text())
    merges = (clip_tokenizer_dir / "merges.txt").read_text().splitlines()
    assert len(vocab) == CLIP_VOCAB_SIZE and merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert merges[1:4] == ["i n", "t h", "a n"]
    assert {k: vocab[k] for k in ("!", "!</w>", "a</w>", "of</w>", "photo</w>", "cat</w>", "tree</w>",
                                  "<|startoftext|>", "<|endoftext|>")} == {
        "!": 0, "!</w>": 256, "a</w>": 320, "of</w>": 539, "photo</w>": 1125, "cat</w>": 2368, "tree</w>": 2677,
        "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    tok = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir))  # the saved folder loads as a checkpoint's does
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A  Photo\tof a CAT")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]  # lower case, spaces
    assert tok.pad_token_id == 49407
    assert make_clip_tokenizer(clip_tokenizer_dir.parent / "tok2", pad_token="!").pad_token_id == 0  # SDXL's tokenizer_2
    assert clip_bpe_file().name == "bpe_simple_vocab_16e6.txt.gz"


def _load(folder, sdxl: bool):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe = (StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline).from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def clip_pipe(request, tiny_sd15_clip, tiny_sdxl_clip):
    return _load(tiny_sdxl_clip if request.param == "sdxl" else tiny_sd15_clip, request.param == "sdxl")


def test_tiny_models_have_the_real_vocabulary(clip_pipe):
    assert len(clip_pipe.tokenizer) == clip_pipe.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
    if hasattr(clip_pipe, "text_encoder_2"):
        assert clip_pipe.text_encoder_2.config.vocab_size == CLIP_VOCAB_SIZE
        assert clip_pipe.tokenizer_2.pad_token == "!" and clip_pipe.tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("weighting", PROMPT_WEIGHTING)
def test_plain_short_prompts_match_diffusers(clip_pipe, weighting):
    from tests.generate.test_prompts import _diffusers

    enc = PromptEncoder(clip_pipe, weighting)
    for prompt, negative in (("a photo of a cat", "blurry, lowres"), ("<fcsks>, a woman, upper body", "")):
        # an empty negative is the pipeline's "no negative prompt" (None: SDXL's force_zeros_for_empty_prompt)
        ours, theirs = enc(prompt, negative), _diffusers(clip_pipe, prompt, negative or None)
        assert set(ours) == set(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), (prompt, k)


def test_facechains_negative_prompt_is_two_chunks_nothing_cut(clip_pipe):
    tok = clip_pipe.tokenizer
    assert len(tok(plain_text(DEFAULT_NEGATIVE_PROMPT), add_special_tokens=False)["input_ids"]) == 98
    with_children = negative_for_subject(DEFAULT_NEGATIVE_PROMPT, "a handsome man")
    enc = PromptEncoder(clip_pipe)
    for negative, tokens in ((DEFAULT_NEGATIVE_PROMPT, 98), (with_children, 100)):
        info = enc.describe("a photo", negative)
        assert (info["negative_prompt_tokens"], info["negative_prompt_chunks"]) == (tokens, 2)
        kw = enc("a photo", negative)
        assert kw["negative_prompt_embeds"].shape[1] == kw["prompt_embeds"].shape[1] == 2 * 77
    # the last words count: diffusers' own encoding cuts them off, ours does not
    other = DEFAULT_NEGATIVE_PROMPT.replace("((extra hands))", "((extra feet))")
    assert not torch.equal(enc("a", DEFAULT_NEGATIVE_PROMPT)["negative_prompt_embeds"], enc("a", other)["negative_prompt_embeds"])
    from tests.generate.test_prompts import _diffusers

    assert torch.equal(_diffusers(clip_pipe, "a", DEFAULT_NEGATIVE_PROMPT)["negative_prompt_embeds"],
                       _diffusers(clip_pipe, "a", other)["negative_prompt_embeds"])


def test_every_shipped_style_prompt(clip_pipe):
    """Each shipped style of the model's family, as generation builds its prompt, with FaceChain's negative:
    the token and chunk counts describe() reports are the tokenizer's, and the embedding holds every chunk."""
    from facechain.generate.styles import load_styles

    family = "sdxl" if hasattr(clip_pipe, "text_encoder_2") else "sd15"
    styles = [s for s in load_styles() if s.family in (family, "any")]
    assert len(styles) >= 10
    tok = clip_pipe.tokenizer
    enc = PromptEncoder(clip_pipe)
    for style in styles:
        prompt = build_prompt("<fcsks>", "a beautiful woman", style.add_prompt_style)
        info = enc.describe(prompt, DEFAULT_NEGATIVE_PROMPT)
        tokens = sum(len(tok(f.text, add_special_tokens=False)["input_ids"]) for f in parse_weighted(prompt))
        assert info["prompt_tokens"] == tokens == len(tok(plain_text(prompt), add_special_tokens=False)["input_ids"])
        assert 20 <= tokens <= 75 and info["prompt_chunks"] == 1, style.name  # every shipped style fits one chunk
        assert info["negative_prompt_chunks"] == 2
        kw = enc(prompt, DEFAULT_NEGATIVE_PROMPT)
        assert kw["prompt_embeds"].shape[1] == 77 * max(info["prompt_chunks"], info["negative_prompt_chunks"])


def test_a1111_chunks_move_a_short_tail_after_a_comma(clip_pipe):
    """A1111's comma_padding_backtrack (20): a chunk that fills up less than 20 tokens after a comma moves
    those tokens to the next chunk; with 0 the cut is at 75 tokens exactly."""
    tok = clip_pipe.tokenizer
    snow, rain, comma = tok.convert_tokens_to_ids(["snow</w>", "rain</w>", ",</w>"])
    fragments = parse_weighted("snow " * 70 + ", " + "(rain:1.2) " * 10)
    chunks = a1111_chunks(tok, fragments)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert [ids for ids, _ in chunks] == [[bos] + [snow] * 70 + [comma] + [eos] * 5,
                                         [bos] + [rain] * 10 + [eos] * 66]
    assert chunks[1][1] == [1.0] + [1.2] * 10 + [1.0] * 66
    plain = a1111_chunks(tok, fragments, backtrack=0)
    assert [ids for ids, _ in plain] == [[bos] + [snow] * 70 + [comma] + [rain] * 4 + [eos],
                                        [bos] + [rain] * 6 + [eos] * 70]
    info = PromptEncoder(clip_pipe).describe("snow " * 70 + ", " + "rain " * 10)
    assert (info["prompt_tokens"], info["prompt_chunks"]) == (81, 2)


def test_a1111_rule_by_hand_with_real_tokens(clip_pipe):
    """A1111's rule on real CLIP tokens: weights > 1 and < 1, nested, 87 tokens = two chunks."""
    from tests.generate.test_prompts import a1111_by_hand

    prompt = "a ((red:1.5) hat) and [blue] shoes " + "snow " * 80 + "(mountain:0.5)"
    pieces = [("a ", 1.0), ("red", 1.5 * 1.1), (" hat", 1.1), (" and ", 1.0), ("blue", 1 / 1.1),
              (" shoes " + "snow " * 80, 1.0), ("mountain", 0.5)]
    sdxl = hasattr(clip_pipe, "text_encoder_2")
    pairs = [(clip_pipe.tokenizer, clip_pipe.text_encoder)] + ([(clip_pipe.tokenizer_2, clip_pipe.text_encoder_2)] if sdxl else [])
    parts = [a1111_by_hand(t, e, pieces, penultimate=sdxl) for t, e in pairs]
    kw = PromptEncoder(clip_pipe)(prompt, "blurry")
    assert PromptEncoder(clip_pipe).describe(prompt)["prompt_tokens"] == 87
    want = torch.cat([z for z, _ in parts], dim=-1)
    assert kw["prompt_embeds"].shape == want.shape == (1, 154, want.shape[-1])
    torch.testing.assert_close(kw["prompt_embeds"], want, rtol=1e-5, atol=1e-6)
    if sdxl:
        with torch.no_grad():
            assert torch.equal(kw["pooled_prompt_embeds"], clip_pipe.text_encoder_2(torch.tensor([parts[1][1]])).text_embeds)


@pytest.mark.slow  # ~7 s: the CLI builds and saves a whole tiny model
def test_make_tiny_model_with_the_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from facechain.cli import main

    assert main(["make-tiny-model", str(tmp_path / "m"), "--tokenizer", "clip"]) == 0
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "m" / "tokenizer"))
    assert len(tok) == CLIP_VOCAB_SIZE and tok("a photo")["input_ids"] == [49406, 320, 1125, 49407]
