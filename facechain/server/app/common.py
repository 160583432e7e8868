"""What more than one tab uses: the choices the dropdowns list (people, styles, poses, templates), an upload
read back, a job's status line, submitting a job and refreshing a tab once its job is done, and the style
preview. A function a tab wires to an event keeps its name: Gradio names the event's API endpoint after it."""

from __future__ import annotations

from pathlib import Path

from facechain.errors import FacechainError
from facechain.families import FAMILIES
from facechain.server.accounts import LOCAL, Account
from facechain.server.gradio_files import cache_dir, check_cached_upload, read_cached_upload
from facechain.server.service import DONE, FAILED, Service
from facechain.generate.poses import named_poses
from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles


def read_upload(service: Service, path) -> tuple[str, bytes]:
    """(file name, bytes) of a file this browser uploaded (in the server's Gradio cache, at most the server's
    ``max_upload_mb``; deleted from the cache once read): what the service's calls take. Any other path is an
    InputError saying that files come only from this browser's uploads."""
    return read_cached_upload(path, cache_dir(service.root), int(service.cfg.max_upload_mb * 1e6))


def upload_path(service: Service, path) -> Path:
    """The path of a file this browser uploaded, checked as :func:`read_upload` does but left in the cache (an
    upload a later event reads)."""
    return check_cached_upload(path, cache_dir(service.root), int(service.cfg.max_upload_mb * 1e6))


def status_line(job: dict) -> str:
    state = job["state"]
    if state == "queued":
        return f"job {job['id']}: queued (position {job.get('position') or 1})"
    if state == FAILED:
        return f"job {job['id']}: failed: {job['error']}"
    return f"job {job['id']}: {state}"


def people_choices(service: Service, account: Account, trained_only: bool = True):
    return [(f"{p['name']} ({p['id']})", p["id"]) for p in service.people(account) if p["trained"] or not trained_only]


def styles():
    return sorted(set(load_styles([DEFAULT_STYLES_DIR]).names()))


def poses():
    return named_poses()


def templates(service: Service):
    from facechain.template.config import named_templates

    return named_templates(service.templates_dir)


def start(submit):
    """(job id, status line) of a submitted job, or (None, the error) when it was refused."""
    try:
        job = submit()
    except FacechainError as exc:
        return None, f"**Error:** {exc}"
    return job["id"], status_line(job)


def when_done(service: Service, account: Account, jid, result):
    """(status line, ``result(job)`` once the job is done) for a tab's timer; nothing changes without a job."""
    import gradio as gr

    if not jid:
        return gr.skip(), gr.skip()
    job = service.job(jid, account)
    return status_line(job), (result(job) if job["state"] == DONE else gr.skip())


def style_preview(names):
    """What each picked style adds: its preview image when the style file names one, its prompt, its LoRA."""
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


def account_of(service: Service, request) -> Account:
    """The logged-in account of a web-app event (Gradio's login: the account name and its token); the one local
    account when the server has no authentication."""
    if not service.accounts.enabled:
        return LOCAL
    account = service.accounts.get(getattr(request, "username", None) or "")
    if account is None:
        raise FacechainError("log in first (reload the page).")
    return account

