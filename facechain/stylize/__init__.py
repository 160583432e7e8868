"""Training-free portrait stylization after a style image.

One engine -- DDIM/LCM inversion with a cache (:mod:`.inversion`), one attention controller
(:mod:`.attention`), mask utilities (:mod:`.masks`) -- and the methods built on it
(:mod:`.methods`: Portrait Diffusion with Chain-of-Painting, StyleID/MagicStyle, MasaCtrl,
DiffStyle), chosen by name from an explicit registry.

    from facechain.stylize import StylizeConfig, build_engine, stylize
    cfg = StylizeConfig(method="portrait-diffusion", loras=["out/lora"])
    engine = build_engine(cfg)
    for style in styles:                       # the content is inverted once
        result = stylize("me.jpg", style, cfg, engine=engine)
"""

from facechain.stylize.api import Stylization, build_engine, composite, save_stylization, stylize
from facechain.stylize.config import (
    DiffStyleOptions,
    MasaCtrlOptions,
    PortraitDiffusionOptions,
    StyleIDOptions,
    StylizeConfig,
)
from facechain.stylize.job import run_stylize_job
from facechain.stylize.registry import MethodSpec, available_methods, get_method, register_method

__all__ = [
    "DiffStyleOptions", "MasaCtrlOptions", "MethodSpec", "PortraitDiffusionOptions", "StyleIDOptions",
    "Stylization", "StylizeConfig", "available_methods", "build_engine", "composite", "get_method",
    "register_method", "run_stylize_job", "save_stylization", "stylize",
]
