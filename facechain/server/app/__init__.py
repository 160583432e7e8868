"""The web app (Gradio): tabs over :class:`facechain.server.service.Service`, no pipeline logic here.

Train: upload photos -> a training job (preprocess + train); its per-photo report, the kept photos and a
live loss plot refresh every second. Portraits: a trained person, styles, pose, fast mode, number of
images -> a gallery ranked by likeness (scores in the captions) and the manifest. Templates: a template
photo, its faces numbered, people mapped left to right -> the result. Stylize: content + style image,
method -> the result. Runs: the account's jobs with their state, manifest, contact sheet and files, and a
cancel button; the LoRA in both formats. People: the account's people with their consent records; train one
again from the start, or delete one with everything made from their photos. Jobs live on the server, so a
browser refresh loses nothing: pick the job in Runs. With authentication on, the app asks for a login (the
account's name and its token) and each account sees only its own people and jobs.

One module per tab, each with its ``build_<tab>_tab(service)``; what several tabs use is in ``common``.
``build_app`` only puts the tabs together, in their order.
"""

from __future__ import annotations

from gradio import Request

from facechain.server.app.common import account_of, people_choices
from facechain.server.app.people import build_people_tab
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
        pickers = [*build_train_tab(service), *build_portraits_tab(service), *build_templates_tab(service),
                   *build_stylize_tab(service), *build_runs_tab(service), *build_people_tab(service)]

        def fill_people(request: Request):  # the logged-in account's people, when the page loads
            who = account_of(service, request)
            return [gr.update(choices=people_choices(service, who, trained_only=trained)) for _, trained in pickers]

        app.load(fill_people, None, [p for p, _ in pickers])
    return app


__all__ = ["build_app", "local_theme"]
