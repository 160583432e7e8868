"""`facechain convert SRC [--file NAME] [--output-dir FILE.safetensors]`: a trusted pickle checkpoint
(.bin/.pt/.pth/.ckpt) to .safetensors, once, so that facechain never unpickles it again.

SRC is a local file, or a hub / ModelScope repo id with ``--file`` (downloaded first). The file is
read with ``torch.load(weights_only=True)`` (tensors and plain containers only). The default output
is facechain's adapter folder ($FACECHAIN_HOME/adapters, ~/.cache/facechain/adapters), where
generation finds IP-Adapter-FaceID's converted default weights:

    facechain convert h94/IP-Adapter-FaceID --file ip-adapter-faceid_sd15.bin
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_output_dir_argument

    p.add_argument("src", help="the pickle checkpoint: a local file, or a hub / ModelScope repo id with --file")
    p.add_argument("--file", default=None, help="file name inside the repo (when SRC is a repo id)")
    p.add_argument("--revision", default=None, help="hub revision / ModelScope version")
    add_output_dir_argument(p, metavar="FILE.safetensors", help="output .safetensors file (default: facechain's adapter folder / <name>.safetensors); "
                                    "an existing file is never overwritten")


def run(args) -> int:
    from facechain.adapters.ip_adapter_faceid import convert_checkpoint

    out = convert_checkpoint(args.src, args._output_dir, filename=args.file, revision=args.revision)
    print(f"converted: {out}")
    return 0
