"""Face-LoRA training (FaceChain's ``train_lora.sh`` stage).

    from facechain.train import TrainConfig, train
    artifact = train(TrainConfig(base_model="path/or/hub-id", train_data_dir="processed", output_dir="lora"))
    artifact.lora_path   # pytorch_lora_weights.safetensors, loads with pipe.load_lora_weights(output_dir)

Modules: ``config`` (TrainConfig), ``data`` (processed folder, FaceCrop, latent cache),
``text`` (SD1.5/SDXL conditioning), ``trainer`` (the face-LoRA trainer's steps), ``loop`` (the one training
loop every trainer runs on: output folder rule, resume, log, divergence), ``lora_weights`` (the LoRA being
trained), ``checkpoint`` (atomic resumable checkpoints), ``validate`` (likeness scoring and selection), and
``facechain.lora`` writes the diffusers/kohya files. Threads and mixed precision: ``facechain.runtime``.
"""

from facechain.train.config import TrainConfig

__all__ = ["TrainConfig", "LoraArtifact", "train"]


def __getattr__(name: str):
    # The trainer imports torch and diffusers; load it on first use so that `facechain --help`
    # and config handling stay fast.
    if name in ("train", "LoraArtifact"):
        from facechain.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'facechain.train' has no attribute {name!r}")
