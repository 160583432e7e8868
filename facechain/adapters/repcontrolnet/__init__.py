"""RepControlNet (arXiv 2408.09240): pose (or another condition) control at the base model's cost.

A trainable "modal network" copies the UNet's conv and linear layers (initialised from the base
weights times a coefficient); an adapter encodes the condition map into the UNet's feature space;
only those two train. After training the modal weights are merged into the base weights
(RepVGG-style re-parameterisation), so the merged UNet has the base's parameters and per-step FLOPs.

* ``model.py``: the two-branch layer, wrapping, merging, the condition adapter and its injection;
* ``train.py``: ``facechain train-adapter repcontrolnet`` (accelerate, resumable, safetensors);
* ``merge.py``: ``facechain merge-repcontrolnet`` (a plain diffusers model folder).
"""
