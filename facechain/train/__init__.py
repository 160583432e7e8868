"""Face-LoRA training (FaceChain's ``train_lora.sh`` stage).

    from facechain.train import TrainConfig, train
    artifact = train(TrainConfig(base_model="path/or/hub-id", train_data_dir="processed", output_dir="lora"))
    artifact.lora_path   # pytorch_lora_weights.safetensors, loads with pipe.load_lora_weights(output_dir)

Modules: ``config`` (TrainConfig), ``data`` (processed folder, FaceCrop, latent cache),
``text`` (SD1.5/SDXL conditioning), ``trainer`` (the loop), ``checkpoint`` (atomic resumable
checkpoints), ``validate`` (likeness scoring and selection), ``export`` (diffusers/kohya files).
"""

from facechain.train.config import TrainConfig
from facechain.train.trainer import LoraArtifact, train

__all__ = ["TrainConfig", "LoraArtifact", "train"]
