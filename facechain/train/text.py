"""Text conditioning of the denoiser for training, as the model family conditions it (SD1.5, SDXL).

SD1.5: the text encoder's last hidden state, as in diffusers' ``train_text_to_image_lora.py``.
SDXL: the penultimate hidden states of both text encoders concatenated, plus the second
encoder's pooled embedding and the six "added time ids" (original size, crop top-left,
target size; SDXL paper, section 2.2), as in diffusers' ``train_text_to_image_lora_sdxl.py``.
The time ids are (res, res, 0, 0, res, res): the crops are trained as if uncropped, which is
the conditioning generation uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facechain.families import Family, get_family


@dataclass
class TextConditioner:
    family: Family
    tokenizers: list
    encoders: list

    @classmethod
    def from_pipeline(cls, pipe, family: "str | Family") -> "TextConditioner":
        family = get_family(family)
        pairs = family.text_encoder_pairs(pipe)
        return cls(family, [t for t, _ in pairs], [e for _, e in pairs])

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer, each (C, max_length)."""
        return [
            tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            for tok in self.tokenizers
        ]

    def encode(self, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds (C, L, D), pooled (C, D2) or None), as the family conditions its denoiser.
        Gradients flow when an encoder trains."""
        outs = [enc(ids.to(enc.device), output_hidden_states=self.family.penultimate, return_dict=True)
                for enc, ids in zip(self.encoders, token_ids)]
        return self.family.text_conditioning(outs, training=True)
