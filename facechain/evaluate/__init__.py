"""The evaluation stage: how much generated portraits look like the person, how varied they are,
and whether any of them copies a reference photo.

``evaluate(generated_dir, reference_dir, cfg)`` measures every image directly in
``generated_dir`` against the photos directly in ``reference_dir`` (sub-folders are not read; a
generate output's ``contact_sheet.png`` is skipped) and writes, through
:class:`facechain.outputs.OutputDir` (staged, committed only when the report is complete):

* ``OUTPUT_DIR/report.json``: the run figures, one entry per generated image and per reference
  photo (with the reason for each unreadable or faceless one), the recogniser used and caveats;
* ``OUTPUT_DIR/report.png``: identity similarity per image against the same-person threshold,
  and a table of the run figures;
* ``OUTPUT_DIR/eval_config.json``: the settings used.

``measure(...)`` is the same without writing anything. Figures, all on the calibrated scale of
:func:`facechain.face.similarity` (0..1, :data:`~facechain.face.SAME_PERSON_THRESHOLD` = 0.5
means same person, for every backend):

* **identity** of an image: the mean of its face's similarity to each reference photo's face.
  The mean of pair scores, not the score to a mean embedding: a pair score is what the backend's
  calibration is defined on (an averaged ArcFace embedding is not a face embedding).
* **same_person_frac**: the fraction of readable images whose identity is at least the
  threshold (an image with no face counts as not the person).
* **identity_diversity**: mean pairwise identity distance (1 - similarity) between the outputs'
  faces; **pixel_diversity**: mean pairwise RMS difference (0..1) of the outputs downsized to
  :data:`PIXEL_SIDE` px square.
* **copy check**: see :func:`copy_identity` and :func:`picture_similarity`; an output is
  flagged a copy when both reach their thresholds.

The recogniser is, when possible, not the one that ranked the images (the ranking picked the
images that recogniser likes best, so its own scores are optimistic): the ranking backend is read
from ``generated_dir/manifest.json`` (written by ``facechain generate``), else given as
``ranking_backend``. With ``face_backend="auto"`` another backend is taken when one loads; when
none does, the ranking one is used and the report says so in ``caveats``.
"""


from facechain.evaluate.chart import render_chart, summary_lines
from facechain.evaluate.measures import copy_identity, picture_similarity, pixel_diversity, portrait_crop, thumbnail
from facechain.evaluate.report import (
    CHART_FILE,
    CONFIG_FILE,
    REPORT_FILE,
    EvalConfig,
    EvalReport,
    EvalResult,
    EvalSummary,
    ImageEntry,
    ReferenceEntry,
)
from facechain.evaluate.stage import choose_analyzer, evaluate, measure, ranking_backend_of
