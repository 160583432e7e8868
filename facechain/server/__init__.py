"""`facechain serve`: one server with the web app (Gradio) and the HTTP API (FastAPI) over the library.

``build_server(ServeConfig)`` returns (the ASGI app, the :class:`Service`); ``demo_config(workdir)`` is
the settings of the offline demo (the tiny model). See docs/serve.md.
"""

from __future__ import annotations

from pathlib import Path

from facechain.server.service import ServeConfig, Service
import os
from facechain.errors import InputError
from facechain.server.app import build_app, local_theme
from facechain.server.security import BrowserGuard, guard_settings
from facechain.server.gradio_files import enforce_file_checks, guard_handlers, use_cache
from facechain.testing import build_tiny_model

DEMO_TRAIN = {"resolution": 64, "max_train_steps": 20, "checkpointing_steps": 10}
DEMO_GENERATE = {"num_inference_steps": 4, "num_candidates": 2, "batch_size": 2, "rank_candidates": False,
                 "fusion": "off", "detailer": "off", "device": "cpu", "dtype": "float32"}
DEMO_TEMPLATE = {"controls": [], "num_inference_steps": 4, "fusion": "off", "device": "cpu", "dtype": "float32"}
DEMO_STYLIZE = {"num_inference_steps": 10, "resolution": 64, "device": "cpu"}


def demo_config(workdir: str | Path) -> ServeConfig:
    """The offline demo: a tiny random model built in the workdir (it draws noise, not faces, so ranking and
    fusion are off), dlib faces, a few training steps."""
    workdir = Path(workdir)
    model = workdir / "models" / "tiny-sd15"
    if not (model / "model_index.json").is_file():
        build_tiny_model(model)
    return ServeConfig(workdir=workdir, base_model=str(model.resolve()), revision="", sub_path="", face_backend="dlib",
                       train=dict(DEMO_TRAIN), generate=dict(DEMO_GENERATE), template=dict(DEMO_TEMPLATE),
                       stylize=dict(DEMO_STYLIZE))


def build_server(cfg: ServeConfig, workers: int | None = None, *, bind_host: str = "127.0.0.1"):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    cache = use_cache(cfg.workdir)  # GRADIO_TEMP_DIR=<workdir>/.web-cache for this process, before Gradio reads it
    import gradio as gr
    from fastapi import FastAPI

    from facechain.server.api import build_api

    from starlette.exceptions import HTTPException

    service = Service(cfg, workers)
    api = FastAPI(title="facechain", docs_url="/api/docs", openapi_url="/api/openapi.json")
    router, on_error, on_http_error = build_api(service)
    api.include_router(router)
    api.add_exception_handler(InputError, on_error)
    api.add_exception_handler(HTTPException, on_http_error)
    web = build_app(service)
    guard_handlers(web, [service.root, service.templates_dir], cache)  # no allowed_paths: cached copies, no paths
    login = service.accounts.check_login if service.accounts.enabled else None  # the web app's login: account + token
    # show_error=False: an exception's text (a cache path, a refused path) never reaches the browser; gr.Error's does
    app = gr.mount_gradio_app(api, web, path="/", theme=local_theme(), max_file_size=int(cfg.max_upload_mb * 1e6),
                              show_error=False, auth=login, auth_message="Log in with your account name and its token.")
    enforce_file_checks(web)  # Gradio's own check on the file paths a client names, as launch() would
    app = BrowserGuard(app, **guard_settings(bind_host, cfg.allowed_hosts, cfg.allowed_origins,
                                             max_request_mb=cfg.max_request_mb))  # Host, CSRF, CORS, body size
    return app, service


__all__ = ["ServeConfig", "Service", "build_server", "demo_config"]
