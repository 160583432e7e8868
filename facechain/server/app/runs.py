"""The Runs tab: the account's jobs with their state; a picked job's manifest (or its record), contact sheet and
files, and a button to cancel it; a person's LoRA in both formats. Jobs live on the server, so a browser
refresh loses nothing."""

from __future__ import annotations

from gradio import Request

from facechain.errors import FacechainError
from facechain.server.app.common import account_of, people_choices, status_line
from facechain.server.service import Service


def build_runs_tab(service: Service) -> list:
    """The tab; returns its people dropdowns, each with whether it lists only trained people (the page
    fills them with the logged-in account's people when it loads)."""
    import gradio as gr

    with gr.Tab("Runs", id="runs"):
        runs_btn = gr.Button("Refresh", elem_id="runs-refresh")
        runs = gr.Dataframe(headers=["job", "kind", "state", "person", "error"], label="Jobs, newest first",
                            elem_id="runs-table")
        run_pick = gr.Dropdown(label="Job", elem_id="runs-job")
        cancel_btn = gr.Button("Cancel this job", size="sm", variant="stop", elem_id="runs-cancel")
        run_status = gr.Markdown("", elem_id="runs-status")
        run_manifest = gr.JSON(label="Manifest / job record", elem_id="runs-manifest")
        run_sheet = gr.Image(label="Contact sheet", interactive=False, elem_id="runs-sheet")
        run_files = gr.File(label="Outputs (download)", file_count="multiple", elem_id="runs-files")
        lora_person = gr.Dropdown(choices=[], label="LoRA of", elem_id="runs-lora-person")
        lora_files = gr.File(label="LoRA (diffusers and kohya/A1111 formats)", file_count="multiple",
                             elem_id="runs-lora-files")

        def list_runs(request: Request):
            who = account_of(service, request)
            jobs = service.jobs(who)
            rows = [[j["id"], j["kind"], j["state"], j.get("person") or "", j.get("error") or ""] for j in jobs]
            return rows, gr.update(choices=[j["id"] for j in jobs]), gr.update(choices=people_choices(service, who))

        def show_run(jid, request: Request):
            if not jid:
                return None, None, None
            who = account_of(service, request)
            job = service.job(jid, who)
            files = [str(service.job_file(jid, f, who)) for f in job["outputs"] if (service.job_dir(jid) / f).is_file()]
            try:
                data = service.job_json(jid, "out/manifest.json", who)
            except FacechainError:
                data = job
            sheet = next((f for f in files if f.endswith("contact_sheet.png")), None)
            return data, sheet, files or None

        def cancel(jid, request: Request):
            if not jid:
                return "**Error:** pick a job first."
            try:
                return status_line(service.cancel_job(jid, account_of(service, request)))
            except FacechainError as exc:
                return f"**Error:** {exc}"

        def show_lora(pid, request: Request):
            if not pid:
                return None
            who = account_of(service, request)
            try:
                return [str(service.lora_file(pid, "diffusers", who)), str(service.lora_file(pid, "kohya", who))]
            except FacechainError:
                return None

        runs_btn.click(list_runs, None, [runs, run_pick, lora_person])
        run_pick.change(show_run, run_pick, [run_manifest, run_sheet, run_files])
        cancel_btn.click(cancel, run_pick, run_status)
        lora_person.change(show_lora, lora_person, lora_files)
    return [(lora_person, True)]
