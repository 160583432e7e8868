"""FeedFace (ICLR'24 tiny paper, seed 001), ported to Stable Diffusion: a person's likeness from one to
five face photos at inference, after training an adapter once on a frozen base model.

Faces are cropped and aligned (insightface's ``norm_crop``), read by a CLIP image encoder (its
penultimate hidden states), projected linearly into the UNet's cross-attention width, and
concatenated (up to five faces) as the condition of adapter blocks that follow each of the UNet's
transformer blocks (self-attention, cross-attention to the face tokens, feed-forward, zero-
initialised output, a multiplier: 0.8 at inference). The base stays frozen.

* ``model.py``: the adapter and the hooks that attach it;
* ``train.py``: ``facechain train-adapter feedface`` on a processed photo folder, with the paper's
  masked loss (|(ε − ε̂)·m|² + |(ε_frozen − ε̂)·(1 − m)|² on 90 % of samples), condition dropout 0.1,
  AdamW 2e-5 / weight decay 0.03, accelerate, resumable safetensors checkpoints;
* ``identity.py``: the trained adapter as generation's identity source (``identity: {adapter: feedface}``).
"""
