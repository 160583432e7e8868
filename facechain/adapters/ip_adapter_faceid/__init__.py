"""IP-Adapter-FaceID (Ye et al. 2023, h94/IP-Adapter-FaceID) through diffusers' own loader.

The adapter turns a face-recognition embedding (insightface's ArcFace, 512-d) into 4 extra
cross-attention tokens (``IPAdapterFaceIDImageProjection``) that IP-Adapter attention processors
attend to next to the prompt, and ships a LoRA trained with it. diffusers loads both:
``pipe.load_ip_adapter(folder, subfolder="", weight_name=..., image_encoder_folder=None)`` (the
LoRA becomes the peft adapter ``faceid_0``), ``pipe.set_ip_adapter_scale(scale)``, and sampling
takes ``ip_adapter_image_embeds=[tensor of shape (2 or 1, 1, 1, D)]`` (zeros first for the
unconditional half when guidance is on).

What facechain adds around it:

* **Safetensors only.** The published checkpoints are pickles (``.bin``); ``facechain convert``
  reads a trusted one once with ``torch.load(weights_only=True)`` and writes ``.safetensors`` (into
  :func:`adapters_home` by default, where the default weights are then found). A ``.bin`` is
  refused with that command in the message.
* **Checked before any sampling** (:func:`check_state`): that the file is an IP-Adapter-FaceID
  checkpoint, made for this base model's family (its cross-attention size and number of
  cross-attention layers match the UNet), and that the face embedding has the size the adapter
  takes (the dlib backend's 128-d embedding is not ArcFace's 512-d).
* **The person's embedding** (:func:`identity_embedding`): the mean of the unit-length embeddings
  of one face per photo, scaled back to unit length. A photo with no face or several faces is an
  error naming it.

insightface's model packs (buffalo_l, antelopev2), whose ArcFace embedding this adapter needs, are
licensed for non-commercial research on

Its modules: :mod:`~facechain.adapters.ip_adapter_faceid.weights` (checkpoints, conversion, the checks),
:mod:`~facechain.adapters.ip_adapter_faceid.embedding` (the person's embedding) and
:mod:`~facechain.adapters.ip_adapter_faceid.adapter` (the two adapters). Import from this package.
"""

from facechain.adapters.ip_adapter_faceid.adapter import (
    CLIP_CHANNELS,
    CLIP_FEATURES_VERSION,
    DEFAULT_IMAGE_ENCODER,
    LICENSE_NOTE,
    PACK_LICENSE,
    IPAdapterFaceID,
    IPAdapterFaceIDPlusV2,
    clip_cache_key,
    encoder_identity,
)
from facechain.adapters.ip_adapter_faceid.embedding import CLIP_CROP, IdentityEmbedding, identity_embedding
from facechain.adapters.ip_adapter_faceid.weights import (
    CHECKPOINTS,
    FACEID_REPO,
    FAMILY_CROSS_DIM,
    PLUS_IN,
    PLUS_OUT,
    FaceIDShape,
    adapters_home,
    check_state,
    convert_checkpoint,
    convert_command,
    read_shape,
    resolve_weights,
)
