"""facechain: a digital-twin toolchain.

Stages (each a plain function with a typed config and a typed result):
``facechain.preprocess`` -> ``facechain.train`` -> ``facechain.generate``, and
``facechain.stylize`` (training-free). Face analysis lives in ``facechain.face``.
"""

__version__ = "0.1.0"
