"""The Train tab: a name, photos and the uploader's consent -> a person and their training job (preprocess +
train); the job's per-photo report, the kept photos and a live loss plot refresh every second."""

from __future__ import annotations

from gradio import Request

from facechain.errors import FacechainError
from facechain.server.app.common import account_of, read_upload, status_line
from facechain.server.service import CONSENT, DONE, Service, require_consent


def build_train_tab(service: Service) -> list:
    import gradio as gr

    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column():
                name = gr.Textbox(label="Name", elem_id="train-name")
                photos = gr.File(label="Photos (one face each)", file_count="multiple", file_types=["image"],
                                 elem_id="train-photos")
                consent = gr.Checkbox(label=CONSENT, value=False, elem_id="train-consent")
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

        def start_train(name_value, files, agreed, request: Request):
            try:
                who = account_of(service, request)
                require_consent(bool(agreed))  # before the uploads are read (each is read once): they stay for a retry
                person = service.add_person(name_value, [read_upload(service, f) for f in files or []], who,
                                            consent=bool(agreed))
                job = service.start_train(person["id"], None, who)
            except FacechainError as exc:
                return None, f"**Error:** {exc}"
            return job["id"], status_line(job)

        def refresh_train(jid, request: Request):
            import pandas as pd

            if not jid:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            who = account_of(service, request)
            job = service.job(jid, who)
            prog = job.get("progress") or {}
            pct = 100.0 * prog.get("step", 0) / prog["total"] if prog.get("total") else 0.0
            rows = [[r["file"], r["status"], r["reason"] or ""] for r in job["info"].get("preprocess", [])]
            thumbs = [str(service.person_file(job["person"], r["output"], who))
                      for r in job["info"].get("preprocess", []) if r["status"] == "kept" and r["output"]]
            curve = pd.DataFrame(prog.get("loss") or [], columns=["step", "loss"])
            line = status_line(job) + (f" - step {prog.get('step', 0)} of {prog.get('total')}" if prog.get("total") else "")
            if job["state"] == DONE:
                line += " - done: pick this person in Portraits"
            return line, (100.0 if job["state"] == DONE else pct), curve, rows, thumbs

        train_btn.click(start_train, [name, photos, consent], [train_job, train_status])
        gr.Timer(1.0).tick(refresh_train, train_job, [train_status, train_progress, loss, report, kept])
    return []
