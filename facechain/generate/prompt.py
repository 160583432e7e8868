"""Prompt building.

Prompt = trigger word + attribute phrase + style prompt + user's extra words (FaceChain's order,
facechain/inference.py). The attribute phrase is the majority caption of ``metadata.jsonl``
("a handsome man", "a beautiful woman", ...), as FaceChain's preprocessing writes one label per person.

diffusers passes prompt text to the tokenizer as is, so AUTOMATIC1111 emphasis syntax such as
``(masterpiece:1.2)``, ``((word))`` or ``[word]`` would be read as literal brackets and numbers
(FaceChain passes ``(<fcsks>:10)`` this way, a bug). :func:`strip_weighting` removes the syntax and
keeps the words, with one warning naming what was changed; escaped brackets ``\\(`` are kept as
literal brackets.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from facechain.errors import InputError
from facechain.io import read_jsonl

logger = logging.getLogger(__name__)

_WEIGHT = re.compile(r"(?<!\\)\(([^()]*?):\s*[-+]?\d*\.?\d+\s*(?<!\\)\)")  # (text:1.2)
_PAREN = re.compile(r"(?<!\\)\(([^()]*?)(?<!\\)\)")  # (text)
_BRACKET = re.compile(r"(?<!\\)\[([^\[\]]*?)(?<!\\)\]")  # [text]


def strip_weighting(text: str, what: str = "prompt") -> str:
    """Remove A1111 weighting/emphasis syntax, keeping the words. Logs one warning when anything changed."""
    out = text
    for _ in range(10):  # nested ((word)) needs several passes
        new = _WEIGHT.sub(r"\1", out)
        new = _PAREN.sub(r"\1", new)
        new = _BRACKET.sub(r"\1", new)
        if new == out:
            break
        out = new
    out = out.replace("\\(", "(").replace("\\)", ")").replace("\\[", "[").replace("\\]", "]")
    out = re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", out)).strip(" ,")
    if out != text.strip(" ,"):
        logger.warning("%s: A1111 weighting syntax removed (diffusers reads it as plain text): %r -> %r", what, text, out)
    return out


def join_prompt(*parts: str) -> str:
    return ", ".join(p.strip(" ,") for p in parts if p and p.strip(" ,"))


def subject_from_metadata(processed_dir: Path | None, trigger_word: str) -> tuple[str, str]:
    """(trigger word, attribute phrase) from ``metadata.jsonl``: the majority caption wins.

    A caption "<fcsks>, a handsome man" gives ("<fcsks>", "a handsome man"). Without a processed
    folder the phrase is "a person"."""
    if processed_dir is None:
        return trigger_word, "a person"
    meta = Path(processed_dir) / "metadata.jsonl"
    if not meta.is_file():
        raise InputError(
            f"processed_dir {processed_dir} has no metadata.jsonl. Pass the output folder of `facechain preprocess`."
        )
    try:
        rows = read_jsonl(meta)
    except UnicodeDecodeError as exc:
        raise InputError(f"{meta} is not UTF-8 text ({exc}). Re-run preprocessing on this folder.") from exc
    texts = [r["text"].strip() for r in rows if isinstance(r, dict) and isinstance(r.get("text"), str) and r["text"].strip()]
    if not texts:
        raise InputError(f"{meta} holds no captions ('text' fields). Re-run preprocessing on this folder.")
    caption = Counter(texts).most_common(1)[0][0]
    head, _, rest = caption.partition(",")
    head = strip_weighting(head.strip(), "caption")
    if rest and head.startswith("<") and head.endswith(">"):
        return head, rest.strip()
    return trigger_word, caption


# FaceChain's attribute labels of an adult man ("a handsome man": 18-40, "a mature man": over 40; see
# preprocessing's gender+age label). For these FaceChain adds "children" to the negative prompt, so a
# young-looking face LoRA does not drift to a boy; boys, girls and women get no such word.
ADULT_MAN_ATTRIBUTES = ("a handsome man", "a mature man")


def negative_for_subject(negative: str, attribute: str) -> str:
    """FaceChain's rule: ``negative`` + ", children" when the attribute phrase is an adult man's."""
    if attribute.strip(" ,").casefold() not in ADULT_MAN_ATTRIBUTES:
        return negative
    words = [w.strip().casefold() for w in negative.split(",")]
    return negative if "children" in words else join_prompt(negative, "children")


def build_prompt(trigger: str, attribute: str, style_prompt: str, extra: str = "") -> str:
    return strip_weighting(join_prompt(trigger, attribute, style_prompt, extra))
