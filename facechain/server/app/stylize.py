"""The Stylize tab: a content image and a style image (each with an optional mask), a method -> the result."""

from __future__ import annotations

from gradio import Request

from facechain.server.app.common import account_of, read_upload, start, when_done
from facechain.server.client_settings import STYLIZE_METHODS
from facechain.server.service import Service


def build_stylize_tab(service: Service) -> list:
    import gradio as gr

    with gr.Tab("Stylize", id="stylize"):
        with gr.Row():
            with gr.Column():
                content = gr.Image(type="filepath", image_mode=None, label="Content (a portrait)", elem_id="stylize-content")
                style_img = gr.Image(type="filepath", image_mode=None, label="Style image", elem_id="stylize-style")
                with gr.Row():
                    content_mask = gr.Image(type="filepath", image_mode=None, label="Content mask (optional: white = stylize)",
                                            elem_id="stylize-content-mask")
                    style_mask = gr.Image(type="filepath", image_mode=None, label="Style mask (optional)", elem_id="stylize-style-mask")
                only_mask = gr.Checkbox(label="Only inside the content mask", value=False, elem_id="stylize-only-mask")
                method = gr.Dropdown(choices=STYLIZE_METHODS, value=STYLIZE_METHODS[0], label="Method",
                                     elem_id="stylize-method")
                sty_btn = gr.Button("Stylize", variant="primary", elem_id="stylize-button")
            with gr.Column():
                sty_status = gr.Markdown("", elem_id="stylize-status")
                sty_result = gr.Gallery(label="Result", elem_id="stylize-result")
        sty_job = gr.State(None)

        def start_stylize(c, s, m, cm, sm, only, request: Request):
            if not c or not s:
                return None, "**Error:** upload a content image and a style image."
            return start(lambda: service.start_stylize(  # the uploads are read inside start: a refusal is a message
                read_upload(service, c), read_upload(service, s), {"method": m, "only_mask_region": bool(only)},
                account_of(service, request), content_mask=read_upload(service, cm) if cm else None,
                style_mask=read_upload(service, sm) if sm else None))

        def refresh_stylize(jid, request: Request):
            who = account_of(service, request)
            return when_done(service, who, jid, lambda job: [str(service.job_file(jid, f, who))
                                                             for f in job["outputs"] if f.endswith(".png")])

        sty_btn.click(start_stylize, [content, style_img, method, content_mask, style_mask, only_mask],
                      [sty_job, sty_status])
        gr.Timer(1.0).tick(refresh_stylize, sty_job, [sty_status, sty_result])
    return []
