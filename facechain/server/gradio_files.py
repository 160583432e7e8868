"""Files between the browser and the web app (Gradio): only the browser's own uploads come in, only copies in
the server's own Gradio cache go out.

Gradio checks the file paths a client names (a ``FileData`` with ``"path": "/etc/passwd"``) in
``gradio.processing_utils._check_allowed``, but only for a Blocks whose ``has_launched`` is true: its first
lines are ``if blocks is None or not blocks.has_launched: return``. ``Blocks.launch()`` sets the flag
(blocks.py, beside ``self.is_running = True``) and so does a reload's ``swap_blocks`` (utils.py);
``gr.mount_gradio_app`` (routes.py) does not, and has no parameter for it (Gradio 6.31). So a mounted app
copied any file a client named into its cache, and served it. :func:`enforce_file_checks` sets the flag
on the mounted Blocks; with it, an input file must lie in Gradio's upload folder
(``check_in_upload_folder=not explicit_call`` in ``Blocks.preprocess_data``). tests/server/test_gradio_files.py
fails if a Gradio release changes that.

Gradio's upload folder is the environment variable ``GRADIO_TEMP_DIR``, read when each component is built
(``Block.GRADIO_CACHE``), when the app is made (``App.uploaded_file_dir``, where ``/gradio_api/upload`` writes
and what ``/gradio_api/file=`` serves) and on every check (``utils.get_upload_folder()``). It cannot be set
for one app only: :func:`use_cache` sets it for the process, to ``<workdir>/.web-cache``, before the web
app is built, and refuses to override a value set by someone else. One server per process.

No ``allowed_paths``: nothing of the workdir is served by its path. What a handler returns for a file
output (a gallery, an image, files to download) is copied into the cache by :func:`serve_outputs_from_cache`
first, and served from there under Gradio's seeded-hash folder names.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import stat
from pathlib import Path

from facechain.errors import InputError

CACHE_FOLDER = ".web-cache"
CACHE_VARIABLE = "GRADIO_TEMP_DIR"
_ours: set[str] = set()  # the values of GRADIO_TEMP_DIR this module set (a later server in the process may move it)


def cache_dir(root: str | Path) -> Path:
    """The folder of this server's Gradio cache (uploads and served copies): ``<workdir>/.web-cache``."""
    return Path(root).resolve() / CACHE_FOLDER


def use_cache(root: str | Path) -> Path:
    """Point Gradio's cache at ``cache_dir(root)`` (the process's ``GRADIO_TEMP_DIR``) and create it; call it
    before the web app's Blocks are built. A ``GRADIO_TEMP_DIR`` that someone else set is refused, not
    overridden."""
    cache = cache_dir(root)
    current = os.environ.get(CACHE_VARIABLE)
    if current and current != str(cache) and current not in _ours:
        raise InputError(f"the environment variable {CACHE_VARIABLE} is set ({current}), but facechain serve keeps "
                         f"Gradio's cache in its workdir ({cache}), where deleting a person cleans it: unset "
                         f"{CACHE_VARIABLE}.")
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[CACHE_VARIABLE] = str(cache)
    _ours.add(str(cache))
    return cache


def enforce_file_checks(blocks) -> None:
    """Make a mounted Blocks apply Gradio's own check on the file paths clients name, as ``launch()`` would
    (see the module's docstring). Call it once ``gr.mount_gradio_app`` has returned."""
    if "has_launched" not in vars(blocks):
        raise RuntimeError("this Gradio version has no Blocks.has_launched flag, which facechain sets so that a "
                           "mounted web app checks the file paths clients send (gradio.processing_utils."
                           "_check_allowed): install the Gradio version pinned in pyproject.toml.")
    blocks.has_launched = True


def _file_components():
    import gradio as gr

    return (gr.File, gr.Image, gr.Gallery, gr.DownloadButton, gr.Video, gr.Audio, gr.Model3D, gr.AnnotatedImage,
            gr.ImageSlider, gr.ImageEditor)


def serve_outputs_from_cache(blocks, roots: list[Path], cache: Path) -> None:
    """Wrap every event handler of ``blocks`` so that a file it returns to a file output (a path inside one of
    ``roots``) is first copied into ``cache``: Gradio then serves the copy, never the original by its path.
    Other values (text, tables, a ``gr.skip()``) pass unchanged."""
    from gradio.processing_utils import save_file_to_cache

    roots = [Path(r).resolve() for r in roots]
    kinds = _file_components()

    def to_cache(value):
        if isinstance(value, (str, Path)) and os.path.isabs(value):
            p = Path(value).resolve()
            if any(p.is_relative_to(r) for r in roots) and p.is_file():
                return save_file_to_cache(p, str(cache))
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(to_cache(v) for v in value)
        if isinstance(value, dict):  # gr.update(value=...), a gallery item as a dict
            return {k: to_cache(v) for k, v in value.items()}
        return value

    def wrap(fn, outputs):
        files = [isinstance(o, kinds) for o in outputs]

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            result = fn(*args, **kwargs)
            if len(outputs) == 1:
                return to_cache(result) if files[0] else result
            if isinstance(result, (list, tuple)) and len(result) == len(outputs):
                return type(result)(to_cache(v) if f else v for v, f in zip(result, files, strict=True))
            return result  # not one value per output: Gradio reports it

        return handler

    for block_fn in blocks.fns.values():
        if block_fn.fn is None or not any(isinstance(o, kinds) for o in block_fn.outputs):
            continue
        if block_fn.types_generator or inspect.iscoroutinefunction(block_fn.fn):
            raise TypeError(f"the web app's handler {block_fn.name} is a generator or async function: "
                            f"serve_outputs_from_cache wraps plain functions only.")
        block_fn.fn = wrap(block_fn.fn, block_fn.outputs)


def read_cached_upload(path, cache: Path, max_bytes: int) -> tuple[str, bytes]:
    """(file name, bytes) of a browser upload in Gradio's ``cache``, then the cached file deleted (the server
    keeps only its own re-encoded copy). Refused (InputError, no server path in the message): a path outside
    the cache (a symlink leading out included), anything but a regular file (a FIFO is never waited on), a
    file over ``max_bytes``."""
    name = Path(str(path)).name
    refused = InputError(f"file {name!r} was refused: files come only from this browser's uploads. Upload it in the "
                         f"web app (or send it to the HTTP API).")
    root = Path(cache).resolve()
    given = Path(os.path.abspath(str(path)))
    real = Path(os.path.realpath(given))
    if not (given.is_relative_to(root) and real.is_relative_to(root)) or real == root:
        raise refused
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags)  # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
    except FileNotFoundError:
        raise InputError(f"file {name!r} is no longer on the server (each upload is read once): upload it again.") from None
    except OSError:
        raise refused from None
    too_big = InputError(f"file {name!r} is over the upload limit of {max_bytes / 1e6:g} MB: upload a smaller file.")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise refused
        if st.st_size > max_bytes:
            raise too_big
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_big
    _remove(real, root)
    if given != real and given.is_symlink():
        _remove(given, root)
    return name, data


def _remove(path: Path, root: Path) -> None:
    """Delete a cached file, and its hashed folder once empty (never the cache folder itself)."""
    path.unlink(missing_ok=True)
    parent = path.parent
    if parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty: another file of the same upload
            pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def purge_cache(root: str | Path, digests: set[str]) -> list[Path]:
    """Delete every file in this server's Gradio cache whose content's sha256 (hex) is in ``digests`` (a
    person's uploads, photos, crops, outputs), and its hashed folder once empty; the deleted paths. Symlinks
    and other non-regular files are never followed or hashed."""
    cache = cache_dir(root)
    wanted = {d.lower() for d in digests}
    removed: list[Path] = []
    if not wanted or not cache.is_dir():
        return removed
    for folder, _, names in os.walk(cache):
        for n in names:
            p = Path(folder) / n
            try:
                if stat.S_ISREG(p.lstat().st_mode) and _sha256(p) in wanted:
                    _remove(p, cache)
                    removed.append(p)
            except FileNotFoundError:  # deleted meanwhile (read once by a handler)
                continue
    return removed


__all__ = ["CACHE_FOLDER", "cache_dir", "enforce_file_checks", "purge_cache", "read_cached_upload",
           "serve_outputs_from_cache", "use_cache"]
