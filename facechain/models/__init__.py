"""Where weights come from. The only package that knows about hubs, folders and checkpoint files.

A base model reference may be:

* a local diffusers folder (``model_index.json`` inside; ``subfolder`` picks a sub-model),
* a single-file checkpoint as model sites ship them (``.safetensors``; pickle formats
  ``.ckpt``/``.bin``/``.pt``/``.pth`` only with ``allow_pickle=True``),
* a Hugging Face hub id (``owner/name``) or a ModelScope id (``owner/name`` + revision such
  as ``v2.0``; FaceChain's default base ``ly261666/cv_portrait_model`` is one).

A hub download fetches only the files that load (:func:`download_plan`): of a pipeline, the components
:func:`load_pipeline` loads (never the safety checker), in the weights variant :func:`plan_component` picks
(``variant`` auto: the fp16 files when running in float16 and they exist). The same rule picks the files of
a local folder, per component, and refuses pickles only in components that load. After the Hugging Face hub
and ModelScope, FaceChain's ModelScope copies (:data:`MODELSCOPE_COPIES`) are tried.

Which model family a model is (SD1.5-family, SDXL) is read from the model's own config (the denoiser's
config for folders and loaded pipelines, the tensor names of single files) by :mod:`facechain.families`,
never from its name or class name.

The helper models are loaded here too: ControlNets (:func:`load_controlnet`), the depth
estimator (:func:`load_depth_estimator`), the OpenPose annotator (:func:`load_pose_annotator`),
the insightface model root and the face swapper's file (:func:`insightface_root`,
:func:`swapper_model_path`), and what ``device``/``dtype`` ``"auto"`` mean (:func:`resolve_device`,
:func:`resolve_dtype`) for every stage.

Its modules: :mod:`~facechain.models.pipeline` (resolving and loading a base model),
:mod:`~facechain.models.hub` (hub sources, ModelScope copies, download plans, fetching),
:mod:`~facechain.models.weights` (the pickle guard, checkpoint files, variant plans, fingerprints),
:mod:`~facechain.models.auxiliary` (ControlNets, image encoder, depth estimator, pose annotator, insightface
paths) and :mod:`~facechain.models.device` (devices and dtypes). Import from ``facechain.models``: the names
below are its API.
"""

from facechain.models.auxiliary import (
    SWAPPER_FILE,
    insightface_root,
    load_controlnet,
    load_depth_estimator,
    load_image_encoder,
    load_pose_annotator,
    swapper_model_path,
)
from facechain.models.device import DEVICE_HELP, DTYPE_HELP, dtype_kwargs, resolve_device, resolve_dtype
from facechain.models.hub import (
    HUB_REF_HELP,
    MODELSCOPE_COPIES,
    Hub,
    HubSource,
    download_plan,
    fetch_first,
    fetch_from_hub,
    hub_sources,
    parse_hub_ref,
    resolve_weights_file,
)
from facechain.models.pipeline import (
    ResolvedModel,
    family_of_checkpoint_keys,
    load_pipeline,
    native_size,
    resolve_model,
)
from facechain.models.weights import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    SKIPPED_COMPONENTS,
    VARIANT_HELP,
    VARIANTS,
    WEIGHT_STEMS,
    ComponentPlan,
    Variant,
    check_checkpoint_file,
    check_folder_weights,
    check_variant,
    files_fingerprint,
    loaded_components,
    model_fingerprint,
    plan_component,
    plan_folder,
    read_weights_file,
    safetensors_only,
    weight_file_kind,
)
