"""The People tab: the account's people, each with its consent record; train one again from the start, or
delete one with everything made from their photos (photos, crops, LoRA, portraits, jobs)."""

from __future__ import annotations

from gradio import Request

from facechain.errors import FacechainError
from facechain.server.app.common import account_of, people_choices, status_line
from facechain.server.service import Service


def build_people_tab(service: Service) -> list:
    """The tab; returns its people dropdowns, each with whether it lists only trained people (the page
    fills them with the logged-in account's people when it loads)."""
    import gradio as gr

    with gr.Tab("People", id="people"):
        with gr.Row():
            person = gr.Dropdown(choices=[], label="Person", elem_id="people-person")
            refresh = gr.Button("Refresh", size="sm", elem_id="people-refresh")
        record = gr.JSON(label="Person (photos, consent, trained)", elem_id="people-record")
        retrain = gr.Button("Train again from the start (the old LoRA is removed)", elem_id="people-retrain")
        confirm = gr.Checkbox(label="Yes: delete this person's photos, model and every image made from them",
                              value=False, elem_id="people-confirm")
        delete = gr.Button("Delete person", variant="stop", elem_id="people-delete")
        status = gr.Markdown("", elem_id="people-status")

        def reload(request: Request):
            return gr.update(choices=people_choices(service, account_of(service, request), trained_only=False),
                             value=None)

        def show(pid, request: Request):
            if not pid:
                return None
            try:
                return service.person(pid, account_of(service, request))
            except FacechainError as exc:
                return {"error": str(exc)}

        def train_again(pid, request: Request):
            if not pid:
                return "**Error:** pick a person first."
            try:
                return status_line(service.start_train(pid, {"restart": True}, account_of(service, request)))
            except FacechainError as exc:
                return f"**Error:** {exc}"

        def remove(pid, sure, request: Request):
            who = account_of(service, request)
            if not pid:
                return "**Error:** pick a person first.", gr.skip(), gr.skip()
            if not sure:
                return "**Error:** tick the box to confirm the deletion first.", gr.skip(), gr.skip()
            try:
                done = service.delete_person(pid, who)
            except FacechainError as exc:
                return f"**Error:** {exc}", gr.skip(), gr.skip()
            return (f"deleted {pid}: photos, model and {len(done['jobs'])} job(s)",
                    gr.update(choices=people_choices(service, who, trained_only=False), value=None), False)

        refresh.click(reload, None, person)
        person.change(show, person, record)
        retrain.click(train_again, person, status)
        delete.click(remove, [person, confirm], [status, person, confirm])
    return [(person, False)]
