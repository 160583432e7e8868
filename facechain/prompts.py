"""Prompt text to text-encoder conditioning: AUTOMATIC1111 weighting and prompts past 77 tokens.

diffusers hands prompt text to the CLIP tokenizer as is: ``(masterpiece:1.2)`` is read as brackets and
numbers, and everything past CLIP's 77 tokens is cut off (FaceChain's long negative prompt loses its
end this way). Here the text is read with AUTOMATIC1111's emphasis rules and encoded with compel
(https://github.com/damian0815/compel), which weights each token's embedding and encodes a long
prompt as several 77-token chunks, concatenated along the token axis, so nothing is truncated:

    encoder = PromptEncoder(pipe)                        # SD1.5 or SDXL pipeline (or one made from it)
    kwargs = encoder("(red scarf:1.3), snow", "(worst quality:2), blurry")
    pipe(**kwargs, num_images_per_prompt=4, ...)         # prompt_embeds, negative_prompt_embeds (+ pooled)

Emphasis rules (AUTOMATIC1111's): ``(words)`` multiplies the weight by 1.1, ``[words]`` divides it
by 1.1, ``(words:1.3)`` multiplies it by 1.3; they nest (``((words))`` is 1.21); ``\\(``, ``\\)``,
``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a bracket left open applies to the end of
the prompt; a stray closing bracket is kept as text. Only the weighting is read here: compel's own
prompt syntax (``word+``, ``.blend()``, quotes) is never parsed, so those characters stay text.

A prompt with no weights that fits in 77 tokens gets exactly the embedding diffusers' own
``encode_prompt`` gives (compel passes it through unweighted), so plain prompts generate the same images.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EMPHASIS = 1.1  # AUTOMATIC1111's factor for one level of () or []

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


class PromptEncoder:
    """Weighted, untruncated conditioning for one SD1.5 or SDXL pipeline (its tokenizers and text encoders).

    ``__call__`` returns the keyword arguments a diffusers pipeline takes instead of ``prompt`` and
    ``negative_prompt``, for a batch of one; pass ``num_images_per_prompt`` to repeat it."""

    def __init__(self, pipe):
        from compel import Compel, ReturnedEmbeddingsType

        self.pipe = pipe
        self.sdxl = getattr(pipe, "text_encoder_2", None) is not None
        if self.sdxl:
            # SDXL: both encoders' penultimate hidden states, un-normalized, side by side; pooled from the second
            kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            pairs = [(t, e) for t, e in pairs if e is not None]
        else:
            kind = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
            pairs = [(pipe.tokenizer, pipe.text_encoder)]
        for tok, _ in pairs:
            # compel tokenizes a long prompt whole before cutting it into 77-token chunks; transformers would
            # warn that this "will result in indexing errors", which is not true here
            getattr(tok, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
        # where the text encoders run: their own device, or the GPU when they wait on the CPU / meta device
        # under diffusers' CPU offload (compel would otherwise put the token ids there)
        device = pipe._execution_device
        self.compels = [Compel(tokenizer=t, text_encoder=e, truncate_long_prompts=False, returned_embeddings_type=kind,
                               device=device) for t, e in pairs]
        self.dtype = pairs[-1][1].dtype

    def _encode(self, compel, fragments: list[Fragment]):
        from compel.prompt_parser import Conjunction, FlattenedPrompt
        from compel.prompt_parser import Fragment as CompelFragment

        prompt = FlattenedPrompt([CompelFragment(f.text, f.weight) for f in fragments])
        cond, _ = compel.build_conditioning_tensor_for_conjunction(Conjunction([prompt]))
        return cond if cond.dim() == 3 else cond[None]

    def _side_by_side(self, text: str, negative: str):
        """(positive, negative) embeddings, each (1, tokens, dim), both of the same token count."""
        import torch

        pos_frags, neg_frags = parse_weighted(text), parse_weighted(negative)
        pos_parts, neg_parts = [], []
        for compel in self.compels:
            p, n = self._encode(compel, pos_frags), self._encode(compel, neg_frags)
            pos_parts.append(p)
            neg_parts.append(n)
        # every part's token count is a multiple of 77: pad each to the longest with that encoder's empty prompt
        longest = max(t.shape[1] for t in pos_parts + neg_parts)
        padded = []
        for compel, p, n in zip(self.compels, pos_parts, neg_parts):
            empty = compel.conditioning_provider.empty_z
            empty = empty if empty.dim() == 3 else empty[None]
            out = []
            for t in (p, n):
                while t.shape[1] < longest:
                    t = torch.cat([t, empty.to(t.dtype)], dim=1)
                out.append(t)
            padded.append(out)
        pos = torch.cat([p for p, _ in padded], dim=-1).to(self.dtype)
        neg = torch.cat([n for _, n in padded], dim=-1).to(self.dtype)
        return pos, neg

    def __call__(self, prompt: str, negative_prompt: str = "") -> dict:
        import torch

        with torch.no_grad():
            pos, neg = self._side_by_side(prompt, negative_prompt)
            kwargs = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
            if self.sdxl:
                provider = self.compels[-1].conditioning_provider
                pooled = provider.get_pooled_embeddings([plain_text(prompt)]).to(self.dtype)
                if not negative_prompt.strip() and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
                    # diffusers' SDXL rule: an empty negative prompt is all zeros, not the empty string's embedding
                    kwargs["negative_prompt_embeds"] = torch.zeros_like(neg)
                    neg_pooled = torch.zeros_like(pooled)
                else:
                    neg_pooled = provider.get_pooled_embeddings([plain_text(negative_prompt)]).to(self.dtype)
                kwargs["pooled_prompt_embeds"] = pooled
                kwargs["negative_pooled_prompt_embeds"] = neg_pooled
        return kwargs

    def describe(self, prompt: str, negative_prompt: str = "") -> dict:
        """Token counts and weighting of both prompts, for manifests and logs."""
        tok = self.compels[0].conditioning_provider.tokenizer
        limit = tok.model_max_length - 2
        info = {}
        for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            n = token_count(tok, text)
            info[f"{key}_tokens"] = n
            info[f"{key}_chunks"] = max(1, -(-n // limit))
            info[f"{key}_weighted"] = has_weighting(text)
        return info
