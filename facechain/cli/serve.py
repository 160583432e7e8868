"""`facechain serve [--host 127.0.0.1] [--port 7860] [--workdir DIR] [--demo] [--config serve.yaml]`:
the web app and the HTTP API on one server (docs/serve.md)."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; 0.0.0.0 "
                                                       "exposes the server to the network, and needs authentication: "
                                                       "$FACECHAIN_SERVE_TOKEN or a tokens file, docs/serve.md)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--workdir", default=None, help="folder for people, jobs and outputs (default: facechain-workdir, "
                                                   "or runs/serve with --demo)")
    p.add_argument("--demo", action="store_true", help="the offline demo: a tiny model built in the workdir, a few "
                                                       "training steps, dlib faces")
    p.add_argument("--config", default=None, help="YAML/JSON of server settings (ServeConfig: base_model, revision, "
                                                  "sub_path, face_backend, train: {...}, generate: {...}, auth_file, allowed_hosts, limits)")
    p.add_argument("--base-model", default=None, help="base model for training (overrides the config)")


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    import uvicorn

    from facechain.config import from_dict, load_mapping
    from facechain.server import ServeConfig, build_server, demo_config
    from facechain.server.accounts import HOW_TO, Accounts, is_loopback

    if args.demo:
        cfg = demo_config(Path(args.workdir or "runs/serve"))
    else:
        data = load_mapping(args.config) if args.config else {}
        if args.workdir:
            data["workdir"] = args.workdir
        cfg = from_dict(ServeConfig, data, where=args.config or "settings")
    if args.base_model:
        cfg = dataclasses.replace(cfg, base_model=args.base_model)
    accounts = Accounts.load(cfg.auth_file)
    if not is_loopback(args.host) and not accounts.enabled:
        print(f"facechain serve: refusing to serve on {args.host} without authentication: anyone who can reach it "
              f"could read and use every person's photos and models. {HOW_TO}.", file=sys.stderr)
        return 1
    app, service = build_server(cfg, bind_host=args.host)
    print(f"facechain: the web app on http://{args.host}:{args.port}/ and the API on http://{args.host}:{args.port}/api "
          f"(workdir {service.root})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
