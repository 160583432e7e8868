"""The Portraits tab: a trained person, styles (with what each adds), a pose, fast mode and the number of
images -> a gallery ranked by likeness (the scores in the captions) and the run's manifest."""

from __future__ import annotations

from gradio import Request

from facechain.errors import FacechainError
from facechain.server.app.common import account_of, people_choices, poses, status_line, style_preview, styles
from facechain.server.service import DONE, Service


def build_portraits_tab(service: Service) -> list:
    """The tab; returns its people dropdowns, each with whether it lists only trained people (the page
    fills them with the logged-in account's people when it loads)."""
    import gradio as gr

    with gr.Tab("Portraits", id="portraits"):
        with gr.Row():
            with gr.Column():
                person = gr.Dropdown(choices=[], label="Person", elem_id="portrait-person")
                reload_people = gr.Button("Refresh people", size="sm", elem_id="portrait-refresh")
                first = ["Business suit"] if "Business suit" in styles() else styles()[:1]  # generation's default
                style_pick = gr.CheckboxGroup(choices=styles(), value=first, label="Styles",
                                              elem_id="portrait-styles")
                style_info = gr.Markdown(style_preview(first), elem_id="portrait-style-preview")
                pose = gr.Dropdown(choices=["(none)"] + poses(), value="(none)", label="Pose", elem_id="portrait-pose")
                fast = gr.Checkbox(label="Fast mode (LCM)", value=False, elem_id="portrait-fast")
                num = gr.Slider(1, service.cfg.max_images, value=min(2, service.cfg.max_images), step=1,
                                label="Images per style", elem_id="portrait-num")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column():
                gen_status = gr.Markdown("", elem_id="generate-status")
                gallery = gr.Gallery(label="Portraits, best first", columns=3, elem_id="portrait-gallery")
                manifest = gr.JSON(label="manifest.json", elem_id="portrait-manifest")
        gen_job = gr.State(None)

        def start_generate(pid, chosen, pose_value, fast_value, n, request: Request):
            try:
                if not pid:
                    raise FacechainError("pick a trained person first.")
                params = {"styles": list(chosen or []), "num_images": int(n), "fast": bool(fast_value)}
                if pose_value and pose_value != "(none)":
                    params["pose"] = pose_value
                job = service.start_generate(pid, params, account_of(service, request))
            except FacechainError as exc:
                return None, f"**Error:** {exc}"
            return job["id"], status_line(job)

        def refresh_generate(jid, request: Request):
            if not jid:
                return gr.skip(), gr.skip(), gr.skip()
            who = account_of(service, request)
            job = service.job(jid, who)
            if job["state"] != DONE:
                return status_line(job), gr.skip(), gr.skip()
            items = [(str(service.job_file(jid, g["file"], who)),
                      f"{g['style']}" + (f": likeness {g['score']:.3f}" if g["score"] is not None else ""))
                     for g in job["info"].get("gallery", [])]
            return status_line(job), items, service.job_json(jid, "out/manifest.json", who)

        def reload(request: Request):
            return gr.update(choices=people_choices(service, account_of(service, request)))

        style_pick.change(style_preview, style_pick, style_info)
        reload_people.click(reload, None, person)
        gen_btn.click(start_generate, [person, style_pick, pose, fast, num], [gen_job, gen_status])
        gr.Timer(1.0).tick(refresh_generate, gen_job, [gen_status, gallery, manifest])
    return [(person, True)]
