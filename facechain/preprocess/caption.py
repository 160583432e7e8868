"""Step 9: caption = trigger word + a gender/age phrase by majority over kept photos.

FaceChain's rule (preprocessing.py, FairFace attributes summed over kept images): child ->
"a boy, children" / "a girl, children"; over 40 -> "a mature man" / "a mature woman"; else
"a handsome man" / "a beautiful woman". Without attributes (dlib) the phrase is neutral.
"""

from __future__ import annotations

from collections import Counter
from statistics import median

CHILD_MAX_AGE = 10  # FairFace's 0-2 and 3-9 bins
MATURE_MIN_AGE = 40
NEUTRAL_PHRASE = "a person"


def attribute_phrase(genders: list[str | None], ages: list[float | None]) -> str:
    g = [x for x in genders if x]
    a = [x for x in ages if x is not None]
    if not g:
        return NEUTRAL_PHRASE
    gender = Counter(g).most_common(1)[0][0]
    age = median(a) if a else 30.0
    if age < CHILD_MAX_AGE:
        return "a boy, children" if gender == "male" else "a girl, children"
    if age > MATURE_MIN_AGE:
        return "a mature man" if gender == "male" else "a mature woman"
    return "a handsome man" if gender == "male" else "a beautiful woman"


def caption(trigger_word: str, phrase: str) -> str:
    return f"{trigger_word}, {phrase}"
