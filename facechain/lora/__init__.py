"""LoRA files, in one place: reading (diffusers, kohya, peft and the old attention-processor
format; alpha from the keys or the file's metadata), finding one (a local file, a trainer's output
folder, a hub id), loading it into a pipeline as a named adapter, and writing the two files the
trainer exports.

Its modules: :mod:`~facechain.lora.formats` (the key layouts, kohya / LyCORIS conversion, SGM names),
:mod:`~facechain.lora.files` (writing, reading and finding LoRA files) and :mod:`~facechain.lora.adapters`
(:func:`load_adapter`). Import from ``facechain.lora``: the names below are its API.
"""

from facechain.lora.adapters import load_adapter, loadable_state
from facechain.lora.files import read_lora_file, read_tensors, resolve, save_diffusers, save_kohya
from facechain.lora.formats import (
    COMPONENTS,
    KOHYA_FILE,
    KOHYA_PREFIXES,
    LORA_FILE,
    LoraDict,
    average,
    flatten,
    key_format,
    kohya_names,
    sgm_unet_path,
    to_kohya,
    unflatten,
)
