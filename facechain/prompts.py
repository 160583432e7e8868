"""Prompt text to text-encoder conditioning: AUTOMATIC1111 weighting and prompts past 77 tokens.

diffusers hands prompt text to the CLIP tokenizer as is: ``(masterpiece:1.2)`` is read as brackets and
numbers, and everything past CLIP's 77 tokens is cut off (FaceChain's long negative prompt loses its
end this way). Here the text is read with AUTOMATIC1111's emphasis rules, cut into chunks of 75 tokens
(each encoded as its own 77 with the start and end markers) and the chunks' embeddings are concatenated
along the token axis, so nothing is truncated:

    encoder = PromptEncoder(pipe)                        # SD1.5 or SDXL pipeline (or one made from it)
    kwargs = encoder("(red scarf:1.3), snow", "(worst quality:2), blurry")
    pipe(**kwargs, num_images_per_prompt=4, ...)         # prompt_embeds, negative_prompt_embeds (+ pooled)

Emphasis rules (AUTOMATIC1111's): ``(words)`` multiplies the weight by 1.1, ``[words]`` divides it
by 1.1, ``(words:1.3)`` multiplies it by 1.3; they nest (``((words))`` is 1.21); ``\\(``, ``\\)``,
``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a bracket left open applies to the end of
the prompt; a stray closing bracket is kept as text. Only the weighting is read here: compel's own
prompt syntax (``word+``, ``.blend()``, quotes) is never parsed, so those characters stay text.

How a weight acts (``weighting``):

* ``"a1111"`` (default), AUTOMATIC1111's rule (stable-diffusion-webui ``modules/sd_hijack_clip.py``,
  ``process_tokens`` with the "Original" emphasis of ``modules/sd_emphasis.py``): each 77-token chunk is
  encoded, every token's vector is multiplied by its weight, and the chunk is rescaled so that its mean
  is the unweighted chunk's mean (``z * w * (z.mean() / (z * w).mean())``). SDXL: each text encoder's chunk
  gets this on its own before the two are put side by side; the pooled embedding is the second encoder's
  on the first chunk, unweighted. Chunks are cut as A1111 cuts them (75 tokens, and a run of at most 20
  tokens after the last comma moves to the next chunk: its "comma_padding_backtrack" default), so
  prompts copied from A1111 or Civitai look as their authors meant. The means are taken in float32 (A1111
  takes them in the model's dtype). A weighted chunk whose mean is 0 has no such rescaling: an error.
* ``"compel"``: compel's arithmetic (https://github.com/damian0815/compel), ``empty + (z - empty) * w``
  against the empty prompt's embedding, chunks as compel cuts them (a weighted long prompt can take one
  more than its tokens need); the pooled embedding is the plain text's, cut at 77 tokens. This is the
  encoder as it was before ``a1111`` was added.

Either way a prompt with no weights that fits in 77 tokens gets exactly the embedding diffusers' own
``encode_prompt`` gives, so plain prompts generate the same images.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from facechain.families import family_of_pipeline
from facechain.errors import InputError

logger = logging.getLogger(__name__)

EMPHASIS = 1.1  # AUTOMATIC1111's factor for one level of () or []
PROMPT_WEIGHTING = ("a1111", "compel")  # how a (word:w) weight acts on the embedding (module docstring)
WEIGHTING_HELP = ("How a (word:1.2) weight acts: a1111 = AUTOMATIC1111's rule (each token's embedding times its weight, "
                  "then the 77-token chunk rescaled to its original mean), compel = compel's (the empty prompt's "
                  "embedding + weight x the difference).")
MEAN_FLOOR = 1e-5  # |mean| / mean(|z|) under this is float rounding around 0 (~1e-8); the tiny SD1.5 models: ~9e-4
CHUNK_TOKENS = 75  # prompt tokens per 77-token CLIP chunk (the start and end markers take the other two)
COMMA_PADDING_BACKTRACK = 20  # AUTOMATIC1111's "comma_padding_backtrack" default (modules/shared_options.py)

_TOKEN = re.compile(
    r"\\[()\[\]\\]"  # escaped literal
    r"|\("
    r"|\["
    r"|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)"  # ":1.3)" closes a round bracket with an explicit weight
    r"|\)"
    r"|\]"
    r"|[^\\()\[\]:]+"
    r"|[\\:]",
)


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and the weight of its tokens (1.0 = unweighted)."""

    text: str
    weight: float


def parse_weighted(text: str) -> list[Fragment]:
    """``text`` as fragments with AUTOMATIC1111 emphasis weights; adjacent equal weights are merged."""
    pieces: list[list] = []  # [text, weight]
    open_round: list[int] = []  # index in pieces where each open bracket starts
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith("\\") and len(tok) == 2:
            pieces.append([tok[1], 1.0])
        elif tok == "(":
            open_round.append(len(pieces))
        elif tok == "[":
            open_square.append(len(pieces))
        elif m.group(1) is not None:
            if open_round:
                scale(open_round.pop(), float(m.group(1)))
            else:  # ":1.3)" with no open bracket: plain text
                pieces.append([tok, 1.0])
        elif tok == ")":
            if open_round:
                scale(open_round.pop(), EMPHASIS)
            else:
                pieces.append([tok, 1.0])
        elif tok == "]":
            if open_square:
                scale(open_square.pop(), 1 / EMPHASIS)
            else:
                pieces.append([tok, 1.0])
        else:
            pieces.append([tok, 1.0])
    for start in open_round:  # left open: applies to the end, as in AUTOMATIC1111
        scale(start, EMPHASIS)
    for start in open_square:
        scale(start, 1 / EMPHASIS)
    merged: list[Fragment] = []
    for t, w in pieces:
        w = round(w, 6)
        if merged and merged[-1].weight == w:
            merged[-1] = Fragment(merged[-1].text + t, w)
        elif t:
            merged.append(Fragment(t, w))
    return [f for f in merged if f.text.strip()] or [Fragment("", 1.0)]


def plain_text(text: str) -> str:
    """The words of ``text`` without weighting syntax (for captions, pooled embeddings and logs)."""
    out = "".join(f.text for f in parse_weighted(text))
    return re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", out)).strip(" ,")


def has_weighting(text: str) -> bool:
    return any(f.weight != 1.0 for f in parse_weighted(text))


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text``'s words (without start/end markers), as the tokenizer splits them."""
    return len(tokenizer(plain_text(text), add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def a1111_chunks(tokenizer, fragments: list[Fragment], backtrack: int = COMMA_PADDING_BACKTRACK
                 ) -> list[tuple[list[int], list[float]]]:
    """``fragments`` as AUTOMATIC1111 cuts them into chunks: (77 token ids, 77 weights) each.

    Each fragment is tokenized on its own; tokens fill chunks of 75; when a chunk is full and the last
    comma is at most ``backtrack`` tokens back, the tokens after it move to the next chunk. A chunk is
    ``[start] + tokens + [end]``, padded with the end marker and then, past the first end marker, with
    the tokenizer's pad token (OpenCLIP's ``!`` for SDXL's second tokenizer), as diffusers' tokenizers pad."""
    start, end, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    texts = [f.text for f in fragments]
    tokenized = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        n = len(ids)
        row = [start] + ids + [end] + [pad] * (CHUNK_TOKENS - n)
        chunks.append((row, [1.0] + weights + [1.0] * (CHUNK_TOKENS + 1 - n)))
        ids, weights, last_comma = [], [], -1

    for tokens, fragment in zip(tokenized, fragments):
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif backtrack and len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= backtrack:
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_TOKENS:
                close()
            ids.append(token)
            weights.append(fragment.weight)
    if ids or not chunks:
        close()
    return chunks


class _A1111Encoder:
    """One tokenizer + text encoder, AUTOMATIC1111's way (see the module docstring)."""

    def __init__(self, tokenizer, text_encoder, penultimate: bool, device=None):
        self.tokenizer, self.text_encoder, self.penultimate = tokenizer, text_encoder, penultimate
        self.device = device

    def _run(self, ids: list[int]):
        import torch

        device = self.device or self.text_encoder.device
        out = self.text_encoder(torch.tensor([ids], device=device), output_hidden_states=self.penultimate)
        return out, (out.hidden_states[-2] if self.penultimate else out[0])  # (1, 77, C)

    def encode(self, fragments: list[Fragment]):
        """(1, 77 x chunks, C): each chunk weighted, then rescaled to its unweighted mean."""
        import torch

        zs = []
        for ids, weights in a1111_chunks(self.tokenizer, fragments):
            z = self._run(ids)[1]
            if all(w == 1.0 for w in weights):  # z * 1 * (mean / mean): z itself (A1111's 0/0 aside)
                zs.append(z)
                continue
            w = torch.tensor(weights, device=z.device, dtype=torch.float32)[None, :, None]  # (1, 77, 1)
            zf = z.float()
            original_mean = zf.mean()
            zf = zf * w
            new_mean = zf.mean()
            # a mean at float rounding's level is 0: the ratio of two such means is noise, not a rescaling
            floor = MEAN_FLOOR * zf.abs().mean()
            if original_mean.abs() <= floor or new_mean.abs() <= floor:
                raise ValueError(
                    f"prompt_weighting a1111 rescales each weighted 77-token chunk to its unweighted mean, but this "
                    f"text encoder's chunk has mean {original_mean.item():.3g} (weighted: {new_mean.item():.3g}; "
                    f"mean 0 below {MEAN_FLOOR:g} of its mean magnitude), so the rule is undefined for it. "
                    "Use prompt_weighting: compel for this model.")
            zs.append((zf * (original_mean / new_mean)).to(z.dtype))
        return torch.cat(zs, dim=1)

    def empty(self):
        return self.encode([Fragment("", 1.0)])

    def pooled(self, text: str):
        """The projected pooled embedding of the first chunk, unweighted (A1111 takes ``zs[0].pooled``)."""
        return self._run(a1111_chunks(self.tokenizer, parse_weighted(text))[0][0])[0].text_embeds

    def count(self, text: str) -> tuple[int, int]:
        """(tokens, 77-token chunks): the fragments' tokens, each fragment tokenized on its own as A1111 does."""
        fragments = parse_weighted(text)
        tokens = self.tokenizer([f.text for f in fragments], add_special_tokens=False, truncation=False,
                                verbose=False)["input_ids"]
        return sum(map(len, tokens)), len(a1111_chunks(self.tokenizer, fragments))


class _CompelEncoder:
    """One tokenizer + text encoder through compel (see the module docstring)."""

    def __init__(self, tokenizer, text_encoder, penultimate: bool, device=None):
        from compel import Compel, ReturnedEmbeddingsType

        kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if penultimate
                else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
        # compel tokenizes a long prompt whole before cutting it into 77-token chunks; transformers would
        # warn that this "will result in indexing errors", which is not true here
        getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
        self.tokenizer = tokenizer
        self.compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=False,
                             returned_embeddings_type=kind, device=device or text_encoder.device)

    def encode(self, fragments: list[Fragment]):
        from compel.prompt_parser import Conjunction, FlattenedPrompt
        from compel.prompt_parser import Fragment as CompelFragment

        prompt = FlattenedPrompt([CompelFragment(f.text, f.weight) for f in fragments])
        cond, _ = self.compel.build_conditioning_tensor_for_conjunction(Conjunction([prompt]))
        return cond if cond.dim() == 3 else cond[None]

    def empty(self):
        empty = self.compel.conditioning_provider.empty_z
        return empty if empty.dim() == 3 else empty[None]

    def pooled(self, text: str):
        """The pooled embedding of the plain text (weights left out), truncated to 77 tokens."""
        return self.compel.conditioning_provider.get_pooled_embeddings([plain_text(text)])

    def count(self, text: str) -> tuple[int, int]:
        """(tokens, 77-token chunks of the embedding compel makes): a weighted long prompt can take a chunk
        more than its tokens need (measured: 137 tokens with one weight -> 3 chunks), so they are counted
        on the embedding itself."""
        import torch

        with torch.no_grad():
            chunks = self.encode(parse_weighted(text)).shape[1] // (CHUNK_TOKENS + 2)
        return token_count(self.tokenizer, text), chunks


_ENCODERS = {"a1111": _A1111Encoder, "compel": _CompelEncoder}


def check_weighting(weighting: str, what: str = "prompt_weighting") -> str:
    """``weighting`` if it is one of :data:`PROMPT_WEIGHTING`, else an InputError that lists them."""
    if weighting not in PROMPT_WEIGHTING:
        raise InputError(f"{what} must be one of {', '.join(PROMPT_WEIGHTING)} (how a (word:1.2) weight acts: "
                         f"AUTOMATIC1111's rule or compel's), got {weighting!r}.")
    return weighting


class PromptEncoder:
    """Weighted, untruncated conditioning for one SD1.5 or SDXL pipeline (its tokenizers and text encoders).

    ``weighting``: ``"a1111"`` (AUTOMATIC1111's rule, the default) or ``"compel"`` (module docstring).
    ``__call__`` returns the keyword arguments a diffusers pipeline takes instead of ``prompt`` and
    ``negative_prompt``, for a batch of one; pass ``num_images_per_prompt`` to repeat it."""

    def __init__(self, pipe, weighting: str = "a1111"):
        self.pipe = pipe
        self.weighting = check_weighting(weighting)
        # the family's encoders, in order (SDXL: both encoders' penultimate hidden states, un-normalized, side by
        # side, pooled from the second; SD1.5: the one encoder's last hidden state)
        family = family_of_pipeline(pipe)
        pairs = family.text_encoder_pairs(pipe)
        self.penultimate, self.pooled = family.penultimate, family.pooled_text
        # where the text encoders run: their own device, or the GPU when they wait on the CPU / meta device
        # under diffusers' CPU offload (the token ids go there)
        device = getattr(pipe, "_execution_device", None)
        self.encoders = [_ENCODERS[weighting](t, e, penultimate=self.penultimate, device=device) for t, e in pairs]
        self.dtype = pairs[-1][1].dtype

    def _side_by_side(self, text: str, negative: str):
        """(positive, negative) embeddings, each (1, tokens, dim), both of the same token count."""
        import torch

        pos_frags, neg_frags = parse_weighted(text), parse_weighted(negative)
        parts = [(enc, enc.encode(pos_frags), enc.encode(neg_frags)) for enc in self.encoders]
        # every part's token count is a multiple of 77: pad each to the longest with that encoder's empty
        # prompt (as A1111 pads the shorter of prompt and negative prompt)
        longest = max(t.shape[1] for _, p, n in parts for t in (p, n))
        padded = []
        for enc, p, n in parts:
            empty = enc.empty()
            padded.append([torch.cat([t] + [empty.to(t.dtype)] * ((longest - t.shape[1]) // empty.shape[1]), dim=1)
                           for t in (p, n)])
        pos = torch.cat([p for p, _ in padded], dim=-1).to(self.dtype)
        neg = torch.cat([n for _, n in padded], dim=-1).to(self.dtype)
        return pos, neg

    def __call__(self, prompt: str, negative_prompt: str = "") -> dict:
        import torch

        with torch.no_grad():
            pos, neg = self._side_by_side(prompt, negative_prompt)
            kwargs = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
            if self.pooled:
                last = self.encoders[-1]
                pooled = last.pooled(prompt).to(self.dtype)
                if not negative_prompt.strip() and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
                    # diffusers' SDXL rule (and A1111's): an empty negative prompt is all zeros, not the empty string's embedding
                    kwargs["negative_prompt_embeds"] = torch.zeros_like(neg)
                    neg_pooled = torch.zeros_like(pooled)
                else:
                    neg_pooled = last.pooled(negative_prompt).to(self.dtype)
                kwargs["pooled_prompt_embeds"] = pooled
                kwargs["negative_pooled_prompt_embeds"] = neg_pooled
        return kwargs

    def describe(self, prompt: str, negative_prompt: str = "") -> dict:
        """Token counts, 77-token chunks and weighting of both prompts, for manifests and logs."""
        enc = self.encoders[0]
        info = {"prompt_weighting": self.weighting}
        for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            info[f"{key}_tokens"], info[f"{key}_chunks"] = enc.count(text)
            info[f"{key}_weighted"] = has_weighting(text)
        return info
