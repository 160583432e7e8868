"""The HTTP API: the web app's operations as JSON endpoints (FastAPI, which Gradio is built on; the
web app is mounted on the same server). Long work returns a job id at once; poll ``GET /api/jobs/{id}``.
With authentication on (docs/serve.md), every endpoint but ``/api/health`` needs ``Authorization: Bearer <token>``.

    GET    /api/health                              -> {"ok": true}
    GET    /api/styles, /api/poses, /api/settings   -> names; what a client may set per job kind, with bounds
    POST   /api/people            (multipart: name, consent=true, photos[])  -> person
    GET    /api/people, /api/people/{id}                                      -> people / person
    DELETE /api/people/{id}                         the person and everything made from their photos
    GET    /api/people/{id}/files/{name}            a processed photo (thumbnails)
    GET    /api/people/{id}/lora?format=diffusers|kohya                      the trained LoRA
    POST   /api/people/{id}/train (JSON: allowed trainer settings; restart: true starts over) -> job
    POST   /api/people/{id}/generate (JSON: styles, num_images, fast, pose, seed, ...)      -> job
    GET    /api/templates                                                     -> the photos in templates/
    POST   /api/template          (multipart: template or name, people (comma-separated ids, left to right)) -> job
    POST   /api/stylize           (multipart: content, style, method; optional content_mask, style_mask,
                                   only_mask_region)                          -> job
    GET    /api/jobs, /api/jobs/{id}                                          -> jobs / job
    POST   /api/jobs/{id}/cancel                                              -> job (cancelled)
    GET    /api/jobs/{id}/files/{path}                                        an output file

Errors are ``{"error": "..."}`` with status 400 (bad input, the message names the fix), 401 (no or a wrong
token), 404 (no such person, job or file, or not yours), 413 (too large), 415 (not JSON) or 429 (a limit).
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from facechain.configfile import load_json
from facechain.errors import InputError
from facechain.generate.poses import named_poses
from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
from facechain.server.accounts import LOCAL, Account, AuthError, bearer_token
from facechain.server.client_settings import CLIENT_SETTINGS
from facechain.server.security import safe_media_type
from facechain.server.service import LimitError, NotFoundError, Service

MAX_JSON_BYTES = 64 * 1024
TRUE = ("true", "1", "yes", "on")


def build_api(service: Service):
    router = APIRouter(prefix="/api")
    limits = service.cfg

    def account(request: Request) -> Account:
        if not service.accounts.enabled:
            return LOCAL
        found = service.accounts.check_token(bearer_token(request.headers.get("authorization")))
        if found is None:
            raise AuthError("this server needs a token: send 'Authorization: Bearer <token>' (ask the server's "
                            "operator for one).")
        return found

    async def json_body(request: Request) -> dict:
        raw = await request.body()
        if not raw:
            return {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, "send the settings as JSON with 'Content-Type: application/json'.")
        if len(raw) > MAX_JSON_BYTES:
            raise HTTPException(413, f"the settings are over {MAX_JSON_BYTES // 1024} KB.")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the request body is not UTF-8 JSON.") from None
        body = load_json(text, "the request body")  # a key given twice, bad JSON, deep nesting: a 400 naming it
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object of settings.")
        return body

    async def form(request: Request, max_files: int):
        """The multipart form, parsed with the count limits enforced as it streams in (the body's size is
        limited before: the server's max_request_mb)."""
        return await request.form(max_files=max_files, max_fields=8)

    async def read(upload, what: str) -> tuple[str, bytes]:
        if not isinstance(upload, UploadFile):
            raise InputError(f"{what} must be an uploaded file.")
        limit = int(limits.max_upload_mb * 1e6)
        if upload.size is not None and upload.size > limit:
            raise InputError(f"{what} {upload.filename!r} is over the upload limit of {limits.max_upload_mb:g} MB.")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{what} {upload.filename!r} is over the upload limit of {limits.max_upload_mb:g} MB.")
        return upload.filename or "", data

    def text(value, default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            raise InputError("a text field was sent as a file.")
        return value

    @router.get("/health")
    def health():
        return {"ok": True, "workers": len(service.devices)}

    @router.get("/styles")
    def styles(who: Account = Depends(account)):
        return {"styles": sorted(set(load_styles([DEFAULT_STYLES_DIR]).names()))}

    @router.get("/poses")
    def poses(who: Account = Depends(account)):
        return {"poses": named_poses()}

    @router.get("/settings")
    def settings(who: Account = Depends(account)):
        return {kind: {name: {"kind": a.kind, "help": a.help, "min": a.bound(a.lo, limits), "max": a.bound(a.hi, limits)}
                       for name, a in fields.items()} for kind, fields in CLIENT_SETTINGS.items()}

    @router.post("/people")
    async def add_person(request: Request, who: Account = Depends(account)):
        data = await form(request, limits.max_photos)
        photos = [await read(f, "photo") for f in data.getlist("photos")]
        return service.add_person(text(data.get("name")), photos, who,
                                  consent=text(data.get("consent")).lower() in TRUE)

    @router.get("/people")
    def people(who: Account = Depends(account)):
        return {"people": service.people(who)}

    @router.get("/people/{pid}")
    def person(pid: str, who: Account = Depends(account)):
        return service.person(pid, who)

    @router.delete("/people/{pid}")
    def delete_person(pid: str, who: Account = Depends(account)):
        return service.delete_person(pid, who)

    @router.get("/people/{pid}/files/{name}")
    def person_file(pid: str, name: str, who: Account = Depends(account)):
        return serve_file(service.person_file(pid, name, who))

    @router.get("/people/{pid}/lora")
    def lora(pid: str, format: str = "diffusers", who: Account = Depends(account)):
        path = service.lora_file(pid, format, who)
        return serve_file(path, download=f"{service.person(pid, who)['name']}_{path.name}")

    @router.post("/people/{pid}/train")
    async def train(pid: str, request: Request, who: Account = Depends(account)):
        return service.start_train(pid, await json_body(request), who)

    @router.post("/people/{pid}/generate")
    async def generate(pid: str, request: Request, who: Account = Depends(account)):
        return service.start_generate(pid, await json_body(request), who)

    @router.get("/templates")
    def templates(who: Account = Depends(account)):
        from facechain.template.config import named_templates

        return {"templates": named_templates(service.templates_dir)}

    @router.post("/template")
    async def template(request: Request, who: Account = Depends(account)):
        data = await form(request, 1)
        ids = [p.strip() for p in text(data.get("people")).split(",") if p.strip()]
        upload, name = data.get("template"), text(data.get("name"))
        if upload is None and not name:
            raise InputError("upload a template photo (template) or name one in templates/ (name).")
        return service.start_template(await read(upload, "template") if upload is not None else name, ids, who)

    @router.post("/stylize")
    async def stylize(request: Request, who: Account = Depends(account)):
        data = await form(request, 4)
        if data.get("content") is None or data.get("style") is None:
            raise InputError("upload a content image (content) and a style image (style).")
        masks = {k: await read(data[k], k.replace("_", " ")) if data.get(k) is not None else None
                 for k in ("content_mask", "style_mask")}
        params = {"method": text(data.get("method"), "portrait-diffusion"),
                  "only_mask_region": text(data.get("only_mask_region"), "false").lower() in TRUE}
        return service.start_stylize(await read(data["content"], "content"), await read(data["style"], "style"),
                                     params, who, **masks)

    @router.get("/jobs")
    def jobs(who: Account = Depends(account)):
        return {"jobs": service.jobs(who)}

    @router.get("/jobs/{jid}")
    def job(jid: str, who: Account = Depends(account)):
        return service.job(jid, who)

    @router.post("/jobs/{jid}/cancel")
    def cancel(jid: str, who: Account = Depends(account)):
        return service.cancel_job(jid, who)

    @router.get("/jobs/{jid}/files/{rel:path}")
    def job_file(jid: str, rel: str, who: Account = Depends(account)):
        path = service.job_file(jid, rel, who)
        if path.suffix.lower() == ".json":  # a manifest: its server paths taken out
            return JSONResponse(service.job_json(jid, rel, who))
        return serve_file(path)

    def serve_file(path, download: str | None = None):
        media_type, attachment = safe_media_type(path)
        name = download or (path.name if attachment else None)
        return FileResponse(path, media_type=media_type, filename=name,
                            content_disposition_type="attachment" if (attachment or download) else "inline")

    def on_error(request, exc: InputError):
        status = (404 if isinstance(exc, NotFoundError) else 401 if isinstance(exc, AuthError)
                  else 429 if isinstance(exc, LimitError) else 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": service.redact(str(exc))}, status_code=status, headers=headers)

    def on_http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    return router, on_error, on_http_error
