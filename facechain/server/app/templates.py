"""The Templates tab: a template photo (uploaded, or one of templates/), its faces found and numbered left to
right, one trained person per face -> the result."""

from __future__ import annotations

from gradio import Request

from facechain.errors import FacechainError
from facechain.server.app.common import account_of, read_upload, start, templates, upload_path, when_done
from facechain.server.service import Service


def build_templates_tab(service: Service) -> list:
    """The tab; returns its people dropdowns, each with whether it lists only trained people (the page
    fills them with the logged-in account's people when it loads)."""
    import gradio as gr

    with gr.Tab("Templates", id="templates"):
        with gr.Row():
            with gr.Column():
                tpl_named = gr.Dropdown(choices=["(upload)"] + templates(service), value="(upload)",
                                        label="Template from templates/", elem_id="template-named")
                tpl = gr.Image(type="filepath", image_mode=None, label="Template photo (upload)", elem_id="template-image")
                detect = gr.Button("Find faces", elem_id="template-detect")
                faces_view = gr.Image(label="Faces, numbered left to right", interactive=False,
                                      elem_id="template-faces")
                tpl_people = gr.Dropdown(choices=[], multiselect=True,
                                         label="People for faces 0, 1, ... (left to right)", elem_id="template-people")
                tpl_btn = gr.Button("Put them in", variant="primary", elem_id="template-button")
            with gr.Column():
                tpl_status = gr.Markdown("", elem_id="template-status")
                tpl_result = gr.Image(label="Result", interactive=False, elem_id="template-result")
        tpl_job = gr.State(None)

        def find_faces(path):
            from facechain.face import get_analyzer
            from facechain.template import list_template_faces

            if not path:
                return None, "upload a template photo first."
            try:
                _, faces, preview = list_template_faces(upload_path(service, path), get_analyzer(service.cfg.face_backend))
            except FacechainError as exc:
                return None, f"**Error:** {exc}"
            return preview, f"{len(faces)} face(s) found; pick one person per face, left to right."

        def pick_template(name):
            return str(service.templates_dir / name) if name in templates(service) else None

        def start_template(named, path, ids, request: Request):
            who = account_of(service, request)
            if named and named != "(upload)":
                return start(lambda: service.start_template(named, list(ids or []), who))
            if not path:
                return None, "**Error:** upload a template photo, or pick one from templates/."
            return start(lambda: service.start_template(read_upload(service, path), list(ids or []), who))

        def refresh_template(jid, request: Request):
            who = account_of(service, request)
            return when_done(service, who, jid, lambda job: str(service.job_file(jid, "out/result.png", who)))

        detect.click(find_faces, tpl, [faces_view, tpl_status])
        tpl_named.change(pick_template, tpl_named, tpl)
        tpl_btn.click(start_template, [tpl_named, tpl, tpl_people], [tpl_job, tpl_status])
        gr.Timer(1.0).tick(refresh_template, tpl_job, [tpl_status, tpl_result])
    return [(tpl_people, True)]
