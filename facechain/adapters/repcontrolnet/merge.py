"""Merge a trained RepControlNet into its base model: a plain diffusers model folder.

    facechain merge-repcontrolnet ADAPTER_DIR --base-model M --output-dir MODEL_DIR

The modal weights go into the base UNet's layers (W' = (1 - c) W + W_m; see ``model.py``), and the
whole pipeline is saved with ``save_pretrained`` (safetensors): the UNet has exactly the base's
parameter names, shapes and count, so MODEL_DIR loads like any base model. The condition encoder
and the adapter's record are kept beside it in ``MODEL_DIR/repcontrolnet/`` (generation feeds it the
pose map); ``MODEL_DIR/repcontrolnet/merge.json`` records the parameter counts.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from facechain.config import model_ref, setting
from facechain.errors import InputError, ModelNotFoundError
from facechain.io import write_json
from facechain.models import load_pipeline, resolve_model
from facechain.outputs import OutputDir, check_writable_folder

logger = logging.getLogger(__name__)

REP_DIR = "repcontrolnet"


@dataclass(frozen=True)
class MergeConfig(model_ref(base_model=setting("The base model the RepControlNet was trained on (hub id, ModelScope id, "
                                               "folder or .safetensors file)."))):
    """What `facechain merge-repcontrolnet` merges into what, and where to."""

    adapter_dir: Path = setting("Output folder of `facechain train-adapter repcontrolnet`.", path=True)
    output_dir: Path = setting("Folder for the merged model.", path=True)
    allow_other_files: bool = setting("Write into an output folder that holds files facechain did not write.",
                                      default=False)


def read_adapter_record(adapter_dir: Path) -> dict:
    from facechain.adapters.repcontrolnet.train import ADAPTER_FILE, MODAL_FILE

    adapter_dir = Path(adapter_dir)
    record = adapter_dir / "repcontrolnet.json"
    missing = [p.name for p in (record, adapter_dir / MODAL_FILE, adapter_dir / ADAPTER_FILE) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"{adapter_dir} is not a finished RepControlNet training folder (missing {missing}). "
                                 "Pass the output folder of `facechain train-adapter repcontrolnet`, after it finished.")
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{record} is damaged ({exc}); train again.") from exc


def merged_record(model_path) -> dict | None:
    """The RepControlNet record of a merged model folder (``MODEL_DIR/repcontrolnet/merge.json``), or None."""
    path = Path(model_path) / REP_DIR / "merge.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path} is damaged ({exc}); merge the RepControlNet again.") from exc


def load_condition_adapter(model_path, unet):
    """The condition encoder kept in a merged model folder, for ``unet``."""
    from safetensors.torch import load_file

    from facechain.adapters.repcontrolnet.model import make_condition_adapter
    from facechain.adapters.repcontrolnet.train import ADAPTER_FILE

    path = Path(model_path) / REP_DIR / ADAPTER_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: the merged RepControlNet model is incomplete. Merge it again.")
    adapter = make_condition_adapter(unet)
    try:
        adapter.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise InputError(f"condition encoder {path} does not fit this model ({type(exc).__name__}). Merge again.") from exc
    return adapter


def merge_repcontrolnet(adapter_dir, base_model: str, out, *, revision: str | None = None, sub_path: str | None = None,
                        single_file_config: str | None = None, allow_pickle: bool = False,
                        allow_other_files: bool = False) -> Path:
    import torch
    from safetensors.torch import load_file

    from facechain.adapters.repcontrolnet.model import load_modal_state, merge_unet, parameter_count, wrap_unet
    from facechain.adapters.repcontrolnet.train import ADAPTER_FILE, MODAL_FILE

    adapter_dir = Path(adapter_dir)
    record = read_adapter_record(adapter_dir)
    check_writable_folder(Path(out), "output_dir")
    resolved = resolve_model(base_model, revision, sub_path, allow_pickle=allow_pickle)
    if record.get("family") != resolved.family:
        raise InputError(f"the RepControlNet in {adapter_dir} was trained on a {record.get('family')} model and "
                         f"{base_model} is {resolved.family}. Merge it into the base model it was trained on.")
    pipe = load_pipeline(resolved, torch_dtype=torch.float32, single_file_config=single_file_config)
    base_count = parameter_count(pipe.unet)
    wrap_unet(pipe.unet, float(record["coefficient"]))
    try:
        load_modal_state(pipe.unet, load_file(str(adapter_dir / MODAL_FILE)))
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"the modal weights in {adapter_dir} do not fit {base_model}'s UNet ({str(exc)[:200]}). Merge "
                         "into the base model the adapter was trained on.") from exc
    merge_unet(pipe.unet)
    merged_count = parameter_count(pipe.unet)
    if merged_count != base_count:  # cannot happen by construction; a merged model must cost what the base costs
        raise RuntimeError(f"merged UNet has {merged_count} parameters, the base {base_count}")
    with OutputDir.open(out, "merge-repcontrolnet", allow_other_files=allow_other_files, what="--out") as od:
        stage = od.stage()
        pipe.save_pretrained(str(stage), safe_serialization=True)
        (stage / REP_DIR).mkdir()
        for name in (ADAPTER_FILE, "repcontrolnet.json"):
            shutil.copyfile(adapter_dir / name, stage / REP_DIR / name)
        adapter = load_file(str(adapter_dir / ADAPTER_FILE))
        write_json(stage / REP_DIR / "merge.json", {
            "adapter_dir": str(adapter_dir.resolve()), "base_model": resolved.to_dict(), "condition": record["condition"],
            "coefficient": record["coefficient"], "unet_parameters": merged_count, "base_unet_parameters": base_count,
            "condition_adapter_parameters": int(sum(t.numel() for t in adapter.values())),
        })
        od.commit(stage)
    logger.info("merged RepControlNet (%s) into %s: %s", record["condition"], out, f"{merged_count:,} UNet parameters")
    return Path(out)
