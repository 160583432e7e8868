"""Text conditioning of the UNet for training, SD1.5 family and SDXL.

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


@dataclass
class TextConditioner:
    family: str  # "sd15" | "sdxl"
    tokenizers: list
    encoders: list

    @classmethod
    def from_pipeline(cls, pipe, family: str) -> "TextConditioner":
        if family == "sdxl":
            return cls(family, [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2])
        return cls(family, [pipe.tokenizer], [pipe.text_encoder])

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer, each (C, max_length)."""
        return [
            tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            for tok in self.tokenizers
        ]

    def encode(self, token_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds (C, L, D), pooled (C, D2) or None). Gradients flow when an encoder trains."""
        if self.family == "sd15":
            enc = self.encoders[0]
            return enc(token_ids[0].to(enc.device), return_dict=False)[0], None
        hidden, pooled = [], None
        for enc, ids in zip(self.encoders, token_ids):
            out = enc(ids.to(enc.device), output_hidden_states=True, return_dict=True)
            hidden.append(out.hidden_states[-2])  # (C, L, D_i), penultimate layer as SDXL
            pooled = out[0]  # text_embeds of the projection encoder (the last one)
        return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(resolution: int, batch: int, device, dtype) -> torch.Tensor:
    """(B, 6) added time ids: original size, crop top-left, target size."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype, device=device)
    return ids.expand(batch, 6)
