"""The Runs tab: every job with its state; a picked job's manifest (or its record), contact sheet and files;
a person's LoRA in both formats. Jobs live on the server, so a browser refresh loses nothing."""

from __future__ import annotations

import json

from facechain.errors import FacechainError
from facechain.server.app.common import people_choices
from facechain.server.service import Service


def build_runs_tab(service: Service) -> None:
    import gradio as gr

    with gr.Tab("Runs", id="runs"):
        runs_btn = gr.Button("Refresh", elem_id="runs-refresh")
        runs = gr.Dataframe(headers=["job", "kind", "state", "person", "error"], label="Jobs, newest first",
                            elem_id="runs-table")
        run_pick = gr.Dropdown(label="Job", elem_id="runs-job")
        run_manifest = gr.JSON(label="Manifest / job record", elem_id="runs-manifest")
        run_sheet = gr.Image(label="Contact sheet", interactive=False, elem_id="runs-sheet")
        run_files = gr.File(label="Outputs (download)", file_count="multiple", elem_id="runs-files")
        lora_person = gr.Dropdown(choices=people_choices(service), label="LoRA of", elem_id="runs-lora-person")
        lora_files = gr.File(label="LoRA (diffusers and kohya/A1111 formats)", file_count="multiple",
                             elem_id="runs-lora-files")

        def list_runs():
            jobs = service.jobs()
            rows = [[j["id"], j["kind"], j["state"], j.get("person") or "", j.get("error") or ""] for j in jobs]
            return rows, gr.update(choices=[j["id"] for j in jobs]), gr.update(choices=people_choices(service))

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
