"""The HTTP API: the web app's operations as JSON endpoints (FastAPI, which Gradio is built on; the
web app is mounted on the same server). Long work returns a job id at once; poll ``GET /api/jobs/{id}``.

    GET  /api/health                              -> {"ok": true}
    GET  /api/styles, /api/poses                  -> names
    POST /api/people            (multipart: name, photos[])           -> person
    GET  /api/people, /api/people/{id}                                  -> people / person
    GET  /api/people/{id}/files/{name}            a processed photo (thumbnails)
    GET  /api/people/{id}/lora?format=diffusers|kohya                  the trained LoRA
    POST /api/people/{id}/train (JSON: trainer settings, optional)     -> job
    POST /api/people/{id}/generate (JSON: styles, num_images, fast, pose, ...) -> job
    GET  /api/templates                                                 -> the photos in templates/
    POST /api/template          (multipart: template or name, people (comma-separated ids, left to right)) -> job
    POST /api/stylize           (multipart: content, style, method; optional content_mask, style_mask,
                                 only_mask_region)                       -> job
    GET  /api/jobs, /api/jobs/{id}                                      -> jobs / job (state, progress, error, outputs)
    GET  /api/jobs/{id}/files/{path}                                    an output file

Errors are ``{"error": "..."}`` with status 400 (bad input, the message names the fix) or 404 (no such
person, job or file).
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from facechain.errors import InputError
from facechain.server.service import NotFoundError, Service
from facechain.generate.poses import named_poses
from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles


def build_api(service: Service):
    router = APIRouter(prefix="/api")

    async def json_body(request: Request) -> dict:
        raw = await request.body()
        if not raw:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise InputError("the request body is not JSON.") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object of settings.")
        return body

    async def read(upload: UploadFile) -> tuple[str, bytes]:
        limit = int(service.cfg.max_upload_mb * 1e6) + 1
        data = await upload.read(limit)
        if len(data) >= limit:
            raise InputError(f"{upload.filename!r} is over the upload limit of {service.cfg.max_upload_mb:g} MB.")
        return upload.filename or "", data

    @router.get("/health")
    def health():
        return {"ok": True, "workers": len(service.devices)}

    @router.get("/styles")
    def styles():
        return {"styles": sorted(set(load_styles([DEFAULT_STYLES_DIR]).names()))}

    @router.get("/poses")
    def poses():
        return {"poses": named_poses()}

    @router.post("/people")
    async def add_person(name: str = Form(""), photos: list[UploadFile] = File(...)):
        return service.add_person(name, [await read(f) for f in photos])

    @router.get("/people")
    def people():
        return {"people": service.people()}

    @router.get("/people/{pid}")
    def person(pid: str):
        return service.person(pid)

    @router.get("/people/{pid}/files/{name}")
    def person_file(pid: str, name: str):
        return FileResponse(service.person_file(pid, name))

    @router.get("/people/{pid}/lora")
    def lora(pid: str, format: str = "diffusers"):
        path = service.lora_file(pid, format)
        return FileResponse(path, filename=f"{service.person(pid)['name']}_{path.name}")

    @router.post("/people/{pid}/train")
    async def train(pid: str, request: Request):
        return service.start_train(pid, await json_body(request))

    @router.post("/people/{pid}/generate")
    async def generate(pid: str, request: Request):
        return service.start_generate(pid, await json_body(request))

    @router.get("/templates")
    def templates():
        from facechain.template.config import named_templates

        return {"templates": named_templates(service.templates_dir)}

    @router.post("/template")
    async def template(people: str = Form(...), template: UploadFile | None = File(None), name: str = Form("")):
        ids = [p.strip() for p in people.split(",") if p.strip()]
        if template is None and not name:
            raise InputError("upload a template photo (template) or name one in templates/ (name).")
        return service.start_template(await read(template) if template is not None else name, ids)

    @router.post("/stylize")
    async def stylize(content: UploadFile = File(...), style: UploadFile = File(...),
                      method: str = Form("portrait-diffusion"), content_mask: UploadFile | None = File(None),
                      style_mask: UploadFile | None = File(None), only_mask_region: bool = Form(False)):
        return service.start_stylize(
            await read(content), await read(style), {"method": method, "only_mask_region": only_mask_region},
            content_mask=await read(content_mask) if content_mask else None,
            style_mask=await read(style_mask) if style_mask else None)

    @router.get("/jobs")
    def jobs():
        return {"jobs": service.jobs()}

    @router.get("/jobs/{jid}")
    def job(jid: str):
        return service.job(jid)

    @router.get("/jobs/{jid}/files/{rel:path}")
    def job_file(jid: str, rel: str):
        return FileResponse(service.job_file(jid, rel))

    def on_error(request, exc: InputError):
        return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, NotFoundError) else 400)

    return router, on_error
