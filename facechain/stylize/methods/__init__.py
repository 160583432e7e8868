"""Built-in stylization methods, registered on import."""

from facechain.stylize.methods import diffstyle, masactrl, portrait_diffusion, styleid
from facechain.stylize.registry import register_method

for _spec in (portrait_diffusion.SPEC, styleid.SPEC, masactrl.SPEC, diffstyle.SPEC):
    register_method(_spec)
