"""Contact sheet captions: words stay apart (a style name with a space must not read as one word)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit  # model-free


def _blank_runs(row_band: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of runs of ink-free columns between the first and last inked column."""
    ink = (row_band < 128).any(axis=0)
    cols = np.flatnonzero(ink)
    runs, start = [], None
    for x in range(cols[0], cols[-1] + 1):
        if not ink[x] and start is None:
            start = x
        elif ink[x] and start is not None:
            runs.append((start, x - start))
            start = None
    return runs


def test_contact_sheet_caption_keeps_the_space_of_a_style_name():
    from PIL import ImageFont

    from facechain.generate.rank import contact_sheet

    thumb = 192
    sheet = contact_sheet([np.full((64, 64, 3), 255, np.uint8)], ["Business suit #0 s42\n0.512"], thumb=thumb)
    gray = np.asarray(sheet.convert("L"))
    line = gray[thumb + 2:thumb + 15, :thumb]  # the first caption line
    runs = _blank_runs(line)
    wide = [r for r in runs if r[1] >= 4]
    assert wide, f"no visible word gap in the caption (blank runs: {runs})"
    # the first wide gap is the space after "Business", not a letter gap
    end_of_business = 3 + ImageFont.load_default().getlength("Business")
    assert abs(wide[0][0] - end_of_business) <= 3
    assert len(wide) >= 3  # "Business", "suit", "#0", "s42": three gaps


def test_contact_sheet_caption_is_cut_at_the_thumbnail_edge():
    from facechain.generate.rank import contact_sheet

    thumb = 96
    sheet = contact_sheet([np.zeros((32, 32, 3), np.uint8)] * 2, ["A very long style name indeed #0 s1\nx"] * 2,
                          thumb=thumb, columns=2)
    gray = np.asarray(sheet.convert("L"))
    line = gray[thumb + 2:thumb + 15]
    assert (line[:, thumb - 1:thumb + 2] > 128).all()  # nothing drawn across into the next cell's caption
