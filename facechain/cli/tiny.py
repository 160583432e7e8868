"""`facechain make-tiny-model OUT_DIR [--family sd15|sdxl] [--tokenizer bytes|clip]`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder to write the tiny diffusers model to")
    from facechain.families import FAMILIES

    p.add_argument("--family", choices=FAMILIES.names(), default="sd15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", choices=["bytes", "clip"], default="bytes",
                   help="bytes: one token per character (no download, no extra package); clip: CLIP's real "
                        "49,408-token tokenizer, built from open-clip-torch's BPE file (pip install open-clip-torch)")


def run(args) -> int:
    from pathlib import Path

    from facechain.errors import InputError
    from facechain.outputs import check_writable_folder
    from facechain.testing import build_tiny_model

    out = Path(args.out_dir)
    check_writable_folder(out, "OUT_DIR")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"OUT_DIR {out} is not empty; the tiny model is written into a new or empty folder only. "
                         "Pass another folder.")
    path = build_tiny_model(args.out_dir, args.family, args.seed, args.tokenizer)
    print(f"tiny {args.family} model written to {path}")
    return 0
