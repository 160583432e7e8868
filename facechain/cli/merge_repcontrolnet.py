"""`facechain merge-repcontrolnet ADAPTER_DIR --base-model M --out MODEL_DIR`: a trained RepControlNet
merged into its base model (a plain diffusers model folder with the base's parameter shapes)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter_dir", help="output folder of `facechain train-adapter repcontrolnet`")
    p.add_argument("--base-model", "--base_model", dest="base_model", required=True,
                   help="the base model it was trained on (hub id, ModelScope id, folder or .safetensors file)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--revision", default=None)
    p.add_argument("--sub-path", "--sub_path", dest="sub_path", default=None)
    p.add_argument("--single-file-config", "--single_file_config", dest="single_file_config", default=None)
    p.add_argument("--allow-pickle", "--allow_pickle", dest="allow_pickle", action="store_true")
    p.add_argument("--allow-other-files", "--allow_other_files", dest="allow_other_files", action="store_true")


def run(args) -> int:
    from facechain.adapters.repcontrolnet.merge import merge_repcontrolnet

    out = merge_repcontrolnet(args.adapter_dir, args.base_model, args.out, revision=args.revision, sub_path=args.sub_path,
                              single_file_config=args.single_file_config, allow_pickle=args.allow_pickle,
                              allow_other_files=args.allow_other_files)
    print(f"merged model written to {out} (use it as base_model)")
    return 0
