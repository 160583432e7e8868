"""Prompt building.

Prompt = trigger word + attribute phrase + style prompt + user's extra words (FaceChain's order,
facechain/inference.py). The attribute phrase is the majority caption of ``metadata.jsonl``
("a handsome man", "a beautiful woman", ...), as FaceChain's preprocessing writes one label per person.

The prompt keeps AUTOMATIC1111 weighting such as ``(masterpiece:1.2)``: :mod:`facechain.prompts`
reads it and encodes prompts past CLIP's 77 tokens without truncating them. The trigger word goes in
unweighted (FaceChain writes ``(<fcsks>:10)``, which its diffusers call read as plain text).
"""

from __future__ import annotations

import logging
from pathlib import Path

from facechain.preprocess.artifact import ProcessedSet
from facechain.prompts import plain_text

logger = logging.getLogger(__name__)


def join_prompt(*parts: str) -> str:
    return ", ".join(p.strip(" ,") for p in parts if p and p.strip(" ,"))


def subject_from_metadata(processed_dir: Path | None, trigger_word: str) -> tuple[str, str]:
    """(trigger word, attribute phrase) from ``metadata.jsonl``: the majority caption wins.

    A caption "<fcsks>, a handsome man" gives ("<fcsks>", "a handsome man"). Without a processed
    folder the phrase is "a person"."""
    if processed_dir is None:
        return trigger_word, "a person"
    caption = ProcessedSet.read(processed_dir, "processed_dir").caption_majority()
    head, _, rest = caption.partition(",")
    head = plain_text(head.strip())
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
    words = [w.strip().casefold() for w in plain_text(negative).split(",")]
    return negative if "children" in words else join_prompt(negative, "children")


def build_prompt(trigger: str, attribute: str, style_prompt: str, extra: str = "") -> str:
    return join_prompt(trigger, attribute, style_prompt, extra)
