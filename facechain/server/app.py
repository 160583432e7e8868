"""The web app (Gradio): tabs over :class:`facechain.server.service.Service`, no pipeline logic here.

Train: upload photos -> a training job (preprocess + train); its per-photo report, the kept photos and a
live loss plot refresh every second. Portraits: a trained person, styles, pose, fast mode, number of
images -> a gallery ranked by likeness (scores in the captions) and the manifest. Templates: a template
photo, its faces numbered, people mapped left to right -> the result. Stylize: content + style image,
method -> the result. Runs: every job with its state, manifest, contact sheet and files; the LoRA in both
formats. Jobs live on the server, so a browser refresh loses nothing: pick the job in Runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from facechain.errors import FacechainError
from facechain.families import FAMILIES
from facechain.server.service import DONE, FAILED, Service


def _read(path) -> tuple[str, bytes]:
    p = Path(path)
    return p.name, p.read_bytes()


def _status_line(job: dict) -> str:
    state = job["state"]
    if state == "queued":
        return f"job {job['id']}: queued (position {job.get('position') or 1})"
    if state == FAILED:
        return f"job {job['id']}: failed: {job['error']}"
    return f"job {job['id']}: {state}"


def local_theme():
    """Gradio's default theme with the system's fonts: the default would fetch Google fonts (a call home, and a
    wait offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_app(service: Service):
    import gradio as gr

    def people_choices(trained_only: bool = True):
        return [(f"{p['name']} ({p['id']})", p["id"]) for p in service.people() if p["trained"] or not trained_only]

    def styles():
        from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

        return sorted(set(load_styles([DEFAULT_STYLES_DIR]).names()))

    def poses():
        from facechain.generate.poses import named_poses

        return named_poses()

    def templates():
        from facechain.template.config import named_templates

        return named_templates(service.templates_dir)

    def start(submit):
        """(job id, status line) of a submitted job, or (None, the error) when it was refused."""
        try:
            job = submit()
        except FacechainError as exc:
            return None, f"**Error:** {exc}"
        return job["id"], _status_line(job)

    def when_done(jid, result):
        """(status line, ``result(job)`` once the job is done) for a tab's timer; nothing changes without a job."""
        if not jid:
            return gr.skip(), gr.skip()
        job = service.job(jid)
        return _status_line(job), (result(job) if job["state"] == DONE else gr.skip())

    def style_preview(names):
        """What each picked style adds: its preview image when the style file names one, its prompt, its LoRA."""
        from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

        registry = load_styles([DEFAULT_STYLES_DIR])
        lines = []
        for name in names or []:
            # the first model family that has a style of this name (the app lists every family's styles)
            family = next((f.name for f in FAMILIES if name in registry.names(f.name)), FAMILIES.names()[-1])
            style = registry.get(name, family)
            img = f"![{name}]({style.img}) " if getattr(style, "img", "") else ""
            lora = f" LoRA: {style.model_id} x {style.multiplier_style}." if style.has_lora else ""
            lines.append(f"{img}**{name}**: {style.add_prompt_style}.{lora}")
        return "\n\n".join(lines) or "Pick at least one style."

    with gr.Blocks(title="facechain") as app:
        gr.Markdown("# facechain\nTrain a face LoRA from a few photos, then make portraits, templates and stylized images.")
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column():
                    name = gr.Textbox(label="Name", elem_id="train-name")
                    photos = gr.File(label="Photos (one face each)", file_count="multiple", file_types=["image"],
                                     elem_id="train-photos")
                    train_btn = gr.Button("Upload and train", variant="primary", elem_id="train-button")
                with gr.Column():
                    train_status = gr.Markdown("No training started.", elem_id="train-status")
                    train_progress = gr.Slider(0, 100, value=0, label="Training progress (%)", interactive=False,
                                               elem_id="train-progress")
                    loss = gr.LinePlot(x="step", y="loss", title="Training loss", elem_id="train-loss")
            report = gr.Dataframe(headers=["photo", "status", "reason"], label="Preprocessing report",
                                  elem_id="train-report")
            kept = gr.Gallery(label="Kept photos (as the LoRA sees them)", columns=6, height=220, elem_id="train-kept")
            train_job = gr.State(None)

            def start_train(name_value, files):
                try:
                    person = service.add_person(name_value, [_read(f) for f in files or []])
                    job = service.start_train(person["id"])
                except FacechainError as exc:
                    return None, f"**Error:** {exc}"
                return job["id"], _status_line(job)

            def refresh_train(jid):
                import pandas as pd

                if not jid:
                    return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                job = service.job(jid)
                prog = job.get("progress") or {}
                pct = 100.0 * prog.get("step", 0) / prog["total"] if prog.get("total") else 0.0
                rows = [[r["file"], r["status"], r["reason"] or ""] for r in job["info"].get("preprocess", [])]
                thumbs = [str(service.person_file(job["person"], r["output"])) for r in job["info"].get("preprocess", [])
                          if r["status"] == "kept" and r["output"]]
                curve = pd.DataFrame(prog.get("loss") or [], columns=["step", "loss"])
                line = _status_line(job) + (f" - step {prog.get('step', 0)} of {prog.get('total')}" if prog.get("total") else "")
                if job["state"] == DONE:
                    line += " - done: pick this person in Portraits"
                return line, (100.0 if job["state"] == DONE else pct), curve, rows, thumbs

            train_btn.click(start_train, [name, photos], [train_job, train_status])
            gr.Timer(1.0).tick(refresh_train, train_job, [train_status, train_progress, loss, report, kept])

        with gr.Tab("Portraits", id="portraits"):
            with gr.Row():
                with gr.Column():
                    person = gr.Dropdown(choices=people_choices(), label="Person", elem_id="portrait-person")
                    reload_people = gr.Button("Refresh people", size="sm", elem_id="portrait-refresh")
                    first = ["Business suit"] if "Business suit" in styles() else styles()[:1]  # generation's default
                    style_pick = gr.CheckboxGroup(choices=styles(), value=first, label="Styles",
                                                  elem_id="portrait-styles")
                    style_info = gr.Markdown(style_preview(first), elem_id="portrait-style-preview")
                    pose = gr.Dropdown(choices=["(none)"] + poses(), value="(none)", label="Pose", elem_id="portrait-pose")
                    fast = gr.Checkbox(label="Fast mode (LCM)", value=False, elem_id="portrait-fast")
                    num = gr.Slider(1, 6, value=2, step=1, label="Images per style", elem_id="portrait-num")
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column():
                    gen_status = gr.Markdown("", elem_id="generate-status")
                    gallery = gr.Gallery(label="Portraits, best first", columns=3, elem_id="portrait-gallery")
                    manifest = gr.JSON(label="manifest.json", elem_id="portrait-manifest")
            gen_job = gr.State(None)

            def start_generate(pid, chosen, pose_value, fast_value, n):
                try:
                    if not pid:
                        raise FacechainError("pick a trained person first.")
                    params = {"styles": list(chosen or []), "num_images": int(n), "fast": bool(fast_value)}
                    if pose_value and pose_value != "(none)":
                        params["pose"] = pose_value
                    job = service.start_generate(pid, params)
                except FacechainError as exc:
                    return None, f"**Error:** {exc}"
                return job["id"], _status_line(job)

            def refresh_generate(jid):
                if not jid:
                    return gr.skip(), gr.skip(), gr.skip()
                job = service.job(jid)
                if job["state"] != DONE:
                    return _status_line(job), gr.skip(), gr.skip()
                items = [(str(service.job_file(jid, g["file"])),
                          f"{g['style']}" + (f": likeness {g['score']:.3f}" if g["score"] is not None else ""))
                         for g in job["info"].get("gallery", [])]
                data = json.loads(service.job_file(jid, "out/manifest.json").read_text(encoding="utf-8"))
                return _status_line(job), items, data

            style_pick.change(style_preview, style_pick, style_info)
            reload_people.click(lambda: gr.update(choices=people_choices()), None, person)
            gen_btn.click(start_generate, [person, style_pick, pose, fast, num], [gen_job, gen_status])
            gr.Timer(1.0).tick(refresh_generate, gen_job, [gen_status, gallery, manifest])

        with gr.Tab("Templates", id="templates"):
            with gr.Row():
                with gr.Column():
                    tpl_named = gr.Dropdown(choices=["(upload)"] + templates(), value="(upload)",
                                            label="Template from templates/", elem_id="template-named")
                    tpl = gr.Image(type="filepath", label="Template photo (upload)", elem_id="template-image")
                    detect = gr.Button("Find faces", elem_id="template-detect")
                    faces_view = gr.Image(label="Faces, numbered left to right", interactive=False,
                                          elem_id="template-faces")
                    tpl_people = gr.Dropdown(choices=people_choices(), multiselect=True,
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
                    _, faces, preview = list_template_faces(path, get_analyzer(service.cfg.face_backend))
                except FacechainError as exc:
                    return None, f"**Error:** {exc}"
                return preview, f"{len(faces)} face(s) found; pick one person per face, left to right."

            def pick_template(name):
                return str(service.templates_dir / name) if name in templates() else None

            def start_template(named, path, ids):
                if named and named != "(upload)":
                    return start(lambda: service.start_template(named, list(ids or [])))
                if not path:
                    return None, "**Error:** upload a template photo, or pick one from templates/."
                return start(lambda: service.start_template(_read(path), list(ids or [])))

            def refresh_template(jid):
                return when_done(jid, lambda job: str(service.job_file(jid, "out/result.png")))

            detect.click(find_faces, tpl, [faces_view, tpl_status])
            tpl_named.change(pick_template, tpl_named, tpl)
            tpl_btn.click(start_template, [tpl_named, tpl, tpl_people], [tpl_job, tpl_status])
            gr.Timer(1.0).tick(refresh_template, tpl_job, [tpl_status, tpl_result])

        with gr.Tab("Stylize", id="stylize"):
            with gr.Row():
                with gr.Column():
                    content = gr.Image(type="filepath", label="Content (a portrait)", elem_id="stylize-content")
                    style_img = gr.Image(type="filepath", label="Style image", elem_id="stylize-style")
                    with gr.Row():
                        content_mask = gr.Image(type="filepath", label="Content mask (optional: white = stylize)",
                                                elem_id="stylize-content-mask")
                        style_mask = gr.Image(type="filepath", label="Style mask (optional)", elem_id="stylize-style-mask")
                    only_mask = gr.Checkbox(label="Only inside the content mask", value=False, elem_id="stylize-only-mask")
                    method = gr.Dropdown(choices=["portrait-diffusion", "styleid", "masactrl", "diffstyle"],
                                         value="portrait-diffusion", label="Method", elem_id="stylize-method")
                    sty_btn = gr.Button("Stylize", variant="primary", elem_id="stylize-button")
                with gr.Column():
                    sty_status = gr.Markdown("", elem_id="stylize-status")
                    sty_result = gr.Gallery(label="Result", elem_id="stylize-result")
            sty_job = gr.State(None)

            def start_stylize(c, s, m, cm, sm, only):
                if not c or not s:
                    return None, "**Error:** upload a content image and a style image."
                masks = {"content_mask": _read(cm) if cm else None, "style_mask": _read(sm) if sm else None}
                return start(lambda: service.start_stylize(_read(c), _read(s), {"method": m, "only_mask_region": bool(only)},
                                                           **masks))

            def refresh_stylize(jid):
                return when_done(jid, lambda job: [str(service.job_file(jid, f)) for f in job["outputs"]
                                                   if f.endswith(".png")])

            sty_btn.click(start_stylize, [content, style_img, method, content_mask, style_mask, only_mask],
                          [sty_job, sty_status])
            gr.Timer(1.0).tick(refresh_stylize, sty_job, [sty_status, sty_result])

        with gr.Tab("Runs", id="runs"):
            runs_btn = gr.Button("Refresh", elem_id="runs-refresh")
            runs = gr.Dataframe(headers=["job", "kind", "state", "person", "error"], label="Jobs, newest first",
                                elem_id="runs-table")
            run_pick = gr.Dropdown(label="Job", elem_id="runs-job")
            run_manifest = gr.JSON(label="Manifest / job record", elem_id="runs-manifest")
            run_sheet = gr.Image(label="Contact sheet", interactive=False, elem_id="runs-sheet")
            run_files = gr.File(label="Outputs (download)", file_count="multiple", elem_id="runs-files")
            lora_person = gr.Dropdown(choices=people_choices(), label="LoRA of", elem_id="runs-lora-person")
            lora_files = gr.File(label="LoRA (diffusers and kohya/A1111 formats)", file_count="multiple",
                                 elem_id="runs-lora-files")

            def list_runs():
                jobs = service.jobs()
                rows = [[j["id"], j["kind"], j["state"], j.get("person") or "", j.get("error") or ""] for j in jobs]
                return rows, gr.update(choices=[j["id"] for j in jobs]), gr.update(choices=people_choices())

            def show_run(jid):
                if not jid:
                    return None, None, None
                job = service.job(jid)
                files = [str(service.job_file(jid, f)) for f in job["outputs"]
                         if (service.job_dir(jid) / f).is_file()]
                try:
                    data = json.loads(service.job_file(jid, "out/manifest.json").read_text(encoding="utf-8"))
                except FacechainError:
                    data = job
                sheet = next((f for f in files if f.endswith("contact_sheet.png")), None)
                return data, sheet, files or None

            def show_lora(pid):
                if not pid:
                    return None
                try:
                    return [str(service.lora_file(pid, "diffusers")), str(service.lora_file(pid, "kohya"))]
                except FacechainError:
                    return None

            runs_btn.click(list_runs, None, [runs, run_pick, lora_person])
            run_pick.change(show_run, run_pick, [run_manifest, run_sheet, run_files])
            lora_person.change(show_lora, lora_person, lora_files)
    return app
