"""Built-in stylization methods. Each module defines ``SPEC`` (a MethodSpec); the registry in
facechain.stylize.registry registers them on first use."""
