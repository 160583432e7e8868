"""Eval's summary lines and chart."""

from __future__ import annotations


import logging

import numpy as np

from facechain.face import SAME_PERSON_THRESHOLD


from facechain.evaluate.report import EvalReport
import textwrap
from facechain.errors import require

logger = logging.getLogger(__name__)


def summary_lines(report: EvalReport) -> list[str]:
    """The run figures as short lines (the CLI prints them; the chart's table shows them)."""
    s = report.summary
    fmt = lambda v, pct=False: "n/a" if v is None else (f"{v:.0%}" if pct else f"{v:.3f}")  # noqa: E731
    ranking = report.ranking_backend or ("not ranked" if report.ranking_backend_source == "manifest" else "unknown")
    return [
        f"images: {s.images} ({s.faces_found} with a face, {s.unreadable} unreadable)",
        f"reference photos with a face: {s.reference_photos}",
        f"recogniser: {report.backend} (ranking: {ranking})",
        f"identity mean / median: {fmt(s.identity_mean)} / {fmt(s.identity_median)}",
        f"same person (>= {SAME_PERSON_THRESHOLD}): {fmt(s.same_person_frac, True)}",
        f"identity diversity: {fmt(s.identity_diversity)}",
        f"pixel diversity: {fmt(s.pixel_diversity)}",
        f"copies of a reference photo: {s.copies}" + (f" ({', '.join(s.copy_files[:3])}{', ...' if s.copies > 3 else ''})"
                                                     if s.copies else ""),
    ]


def render_chart(report: EvalReport) -> np.ndarray:
    """The report as a picture (RGB uint8): a histogram of the images' identity similarity with the
    same-person threshold line, one dot per image below it (copies of a reference photo in red),
    then the run figures as a table and the caveats."""
    require("matplotlib", "the chart of facechain eval")  # drawn on an Agg canvas directly: no pyplot, no global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [e for e in report.images if e.identity is not None]
    caveats = [textwrap.fill("caveat: " + c, 125) for c in report.caveats]
    caveat_lines = sum(c.count("\n") + 1 for c in caveats)
    caveat_h = 0.18 * caveat_lines + (0.2 if caveats else 0.0)  # inches
    fig = Figure(figsize=(9, 6.6 + caveat_h), dpi=100)
    gs = fig.add_gridspec(4, 1, height_ratios=[2.2, 0.9, 2.3, max(caveat_h, 0.01) * 1.4], hspace=0.35,
                          left=0.07, right=0.97, top=0.93, bottom=0.01)
    fig.suptitle(f"facechain eval: likeness of {report.summary.images} images to {report.summary.reference_photos} "
                 f"reference photos (measured with {report.backend})", fontsize=11)
    hist = fig.add_subplot(gs[0])
    strip = fig.add_subplot(gs[1], sharex=hist)
    if ok:
        hist.hist([e.identity for e in ok], bins=np.linspace(0, 1, 21), color="#4c78a8", edgecolor="white")
    for ax in (hist, strip):
        ax.axvline(SAME_PERSON_THRESHOLD, color="#d62728", linestyle="--", linewidth=1.5,
                   label=f"same-person threshold {SAME_PERSON_THRESHOLD}" if ax is hist else None)
    hist.set_ylabel("images")
    hist.set_title("identity similarity to the reference photos (mean over the photos)", fontsize=10)
    hist.legend(loc="upper left", fontsize=8, frameon=False)
    hist.tick_params(labelbottom=False)
    rng = np.random.default_rng(0)  # vertical jitter only, so that equal scores stay visible
    for copy, colour, label in ((False, "#4c78a8", "an image"), (True, "#d62728", "a copy of a reference photo")):
        pts = [e.identity for e in ok if e.copy == copy]
        if pts:
            strip.scatter(pts, rng.uniform(-0.3, 0.3, len(pts)), s=28, color=colour, alpha=0.85, label=label,
                          edgecolors="black" if copy else "none", linewidths=0.6)
    strip.set_xlim(0, 1)
    strip.set_ylim(-0.5, 0.5)
    strip.set_yticks([])
    missing = len(report.images) - len(ok)
    strip.set_xlabel("identity similarity (calibrated: 0.5 = same person)"
                     + (f"; {missing} image(s) without a face or unreadable, not shown" if missing else ""))
    if ok:
        strip.legend(loc="upper left", bbox_to_anchor=(0, 1.02), fontsize=8, frameon=False, ncol=2)
    table_ax = fig.add_subplot(gs[2])
    table_ax.axis("off")
    rows = [line.split(": ", 1) for line in summary_lines(report)]
    table = table_ax.table(cellText=rows, colWidths=[0.36, 0.64], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    note_ax = fig.add_subplot(gs[3])
    note_ax.axis("off")
    if caveats:
        note_ax.text(0.0, 1.0, "\n".join(caveats), fontsize=8, va="top", ha="left", transform=note_ax.transAxes,
                     color="#8a4b00")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


