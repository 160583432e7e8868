"""The web app (Gradio): tabs over :class:`facechain.server.service.Service`, no pipeline logic here.

Train: upload photos -> a training job (preprocess + train); its per-photo report, the kept photos and a
live loss plot refresh every second. Portraits: a trained person, styles, pose, fast mode, number of
images -> a gallery ranked by likeness (scores in the captions) and the manifest. Templates: a template
photo, its faces numbered, people mapped left to right -> the result. Stylize: content + style image,
method -> the result. Runs: every job with its state, manifest, contact sheet and files; the LoRA in both
formats. Jobs live on the server, so a browser refresh loses nothing: pick the job in Runs.

One module per tab, each with its ``build_<tab>_tab(service)``; what several tabs use is in ``common``.
``build_app`` only puts the tabs together, in their order.
"""

from __future__ import annotations

from facechain.server.app.portraits import build_portraits_tab
from facechain.server.app.runs import build_runs_tab
from facechain.server.app.stylize import build_stylize_tab
from facechain.server.app.templates import build_templates_tab
from facechain.server.app.train import build_train_tab
from facechain.server.service import Service


def local_theme():
    """Gradio's default theme with the system's fonts: the default would fetch Google fonts (a call home, and a
    wait offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_app(service: Service):
    import gradio as gr

    with gr.Blocks(title="facechain") as app:
        gr.Markdown("# facechain\nTrain a face LoRA from a few photos, then make portraits, templates and stylized images.")
        build_train_tab(service)
        build_portraits_tab(service)
        build_templates_tab(service)
        build_stylize_tab(service)
        build_runs_tab(service)
    return app


__all__ = ["build_app", "local_theme"]
