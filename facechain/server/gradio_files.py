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
output (a gallery, an image, files to download) is copied into the cache by :func:`guard_handlers` first,
and served from there under Gradio's seeded-hash folder names; a server path in a message is cut to its name.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import stat
from pathlib import Path

from facechain.errors import FacechainError, InputError
from facechain.outputs import sha256_file

CACHE_FOLDER = ".web-cache"
CACHE_MARKER = ".facechain-web-cache"  # written when the server makes the folder: its sweeps act only where it is
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
    marker = cache / CACHE_MARKER
    if cache.is_dir() and not marker.is_file() and any(cache.iterdir()):
        raise InputError(f"{cache} holds files facechain serve did not put there (no {CACHE_MARKER}); the server empties "
                         "its web cache there, so it will not use that folder. Move it away, or choose another workdir.")
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not marker.is_file():
        marker.write_text("facechain serve's web cache: files here are removed after web_cache_hours and on deletion\n")
    os.environ[CACHE_VARIABLE] = str(cache)
    _ours.add(str(cache))
    return cache


def enforce_file_checks(blocks) -> None:
    """Make a mounted Blocks apply Gradio's own check on the file paths clients name, as ``launch()`` would
    (see the module's docstring). Call it once ``gr.mount_gradio_app`` has returned."""
    if "has_launched" not in vars(blocks):
        raise RuntimeError("this Gradio version has no Blocks.has_launched flag, which facechain sets so that a "
                           "mounted web app checks the file paths clients send (gradio.processing_utils."
                           "_check_allowed): install Gradio 6.31 (tested), or port facechain.server.gradio_files to this version.")
    blocks.has_launched = True


def _file_components():
    import gradio as gr

    return (gr.File, gr.Image, gr.Gallery, gr.DownloadButton, gr.Video, gr.Audio, gr.Model3D, gr.AnnotatedImage,
            gr.ImageSlider, gr.ImageEditor)


def guard_handlers(blocks, roots: list[Path], cache: Path) -> None:
    """Wrap every event handler of ``blocks``: a file it returns to a file output (a path inside one of ``roots``)
    is first copied into ``cache``, so Gradio serves the copy, never the original by its path; in what it returns
    to any other output (a status line, a table, a manifest) a path inside ``roots`` or ``cache`` is cut to its
    file name, so no message names a server folder. Other values (a ``gr.skip()``, numbers) pass unchanged."""
    from gradio.processing_utils import save_file_to_cache

    roots = [Path(r).resolve() for r in roots]
    kinds = _file_components()
    folders = sorted({str(r) for r in [*roots, Path(cache).resolve()]}, key=len, reverse=True)
    in_text = re.compile("(?:" + "|".join(re.escape(f) for f in folders) + r")(?:[/\\][^\s'\"`<>()\[\]]*)?")

    def to_cache(value):
        if isinstance(value, (str, Path)) and os.path.isabs(value):
            p = Path(value).resolve()
            if any(p.is_relative_to(r) for r in roots) and p.is_file():
                return save_file_to_cache(p, str(cache))
            return value
        return _each(value, to_cache)

    def short(match: re.Match) -> str:
        path = match.group(0)
        end = len(path.rstrip(".,;:"))  # a sentence's full stop after the path stays
        name = Path(path[:end]).name if path[:end].rstrip("/\\") not in folders else "the server's folder"
        return name + path[end:]

    def scrub(value):
        return in_text.sub(short, value) if isinstance(value, str) else _each(value, scrub)

    def wrap(fn, outputs):
        mend = [to_cache if isinstance(o, kinds) else scrub for o in outputs]

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                result = fn(*args, **kwargs)
            except FacechainError as exc:  # a refusal the handler did not turn into a message: shown, paths cut
                import gradio as gr

                raise gr.Error(scrub(str(exc))) from None
            if len(outputs) == 1:
                return mend[0](result)
            if isinstance(result, (list, tuple)) and len(result) == len(outputs):
                return type(result)(m(v) for m, v in zip(mend, result, strict=True))
            return result  # not one value per output: Gradio reports it

        return handler

    for block_fn in blocks.fns.values():
        if block_fn.fn is None or not block_fn.outputs:
            continue
        if block_fn.types_generator or inspect.iscoroutinefunction(block_fn.fn):
            raise TypeError(f"the web app's handler {block_fn.name} is a generator or async function: "
                            f"guard_handlers wraps plain functions only.")
        block_fn.fn = wrap(block_fn.fn, block_fn.outputs)


def _each(value, fn):
    """``fn`` applied inside lists, tuples and dicts (``gr.update(value=...)``, table rows, a manifest)."""
    if isinstance(value, (list, tuple)):
        return type(value)(fn(v) for v in value)
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    return value


def _open_upload(path, cache: Path, max_bytes: int):
    """(file name, cache folder, the path as given, its real path, the file open for reading) of a regular file
    of at most ``max_bytes`` inside ``cache``; else an InputError without any server path."""
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
    f = os.fdopen(fd, "rb")
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        f.close()
        raise refused if not stat.S_ISREG(st.st_mode) else _too_big(name, max_bytes)
    return name, root, given, real, f


def _too_big(name: str, max_bytes: int) -> InputError:
    return InputError(f"file {name!r} is over the upload limit of {max_bytes / 1e6:g} MB: upload a smaller file.")


def read_cached_upload(path, cache: Path, max_bytes: int) -> tuple[str, bytes]:
    """(file name, bytes) of a browser upload in Gradio's ``cache``, then the cached file deleted (the server
    keeps only its own re-encoded copy). Refused (InputError, no server path in the message): a path outside
    the cache (a symlink leading out included), anything but a regular file (a FIFO is never waited on), a
    file over ``max_bytes``."""
    name, root, given, real, f = _open_upload(path, cache, max_bytes)
    with f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since its size was read
        raise _too_big(name, max_bytes)
    _remove(real, root)
    if given != real and given.is_symlink():
        _remove(given, root)
    return name, data


def check_cached_upload(path, cache: Path, max_bytes: int) -> Path:
    """The real path of a browser upload in ``cache``, checked as :func:`read_cached_upload` does but kept: for a
    handler that only looks at an upload another event then reads (the Templates tab's face finder)."""
    *_, real, f = _open_upload(path, cache, max_bytes)
    f.close()
    return real


def _remove(path: Path, root: Path) -> None:
    """Delete a cached file, and its hashed folder once empty (never the cache folder itself)."""
    path.unlink(missing_ok=True)
    parent = path.parent
    if parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty: another file of the same upload
            pass


def purge_cache(root: str | Path, digests: set[str]) -> list[Path]:
    """Delete every file in this server's Gradio cache whose content's sha256 (hex) is in ``digests`` (a
    person's uploads, photos, crops, outputs), and its hashed folder once empty; the deleted paths. Symlinks
    and other non-regular files are never followed or hashed."""
    cache = cache_dir(root)
    wanted = {d.lower() for d in digests}
    removed: list[Path] = []
    if not wanted or not (cache / CACHE_MARKER).is_file():  # nothing asked, or not the server's own cache folder
        return removed
    for folder, _, names in os.walk(cache):
        for n in names:
            p = Path(folder) / n
            try:
                if stat.S_ISREG(p.lstat().st_mode) and sha256_file(p) in wanted:
                    _remove(p, cache)
                    removed.append(p)
            except FileNotFoundError:  # deleted meanwhile (read once by a handler)
                continue
    return removed


def expire_cache(root: str | Path, older_than: float) -> list[Path]:
    """Delete every regular file in this server's Gradio cache last modified before ``older_than`` (a time):
    uploads never submitted and the copies of what the web app showed (it copies again what it shows next)."""
    cache = cache_dir(root)
    removed: list[Path] = []
    if not (cache / CACHE_MARKER).is_file():  # not the server's own cache folder
        return removed
    for folder, _, names in os.walk(cache):
        for n in names:
            p = Path(folder) / n
            if p == cache / CACHE_MARKER:
                continue
            try:
                st = p.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_mtime < older_than:
                    _remove(p, cache)
                    removed.append(p)
            except FileNotFoundError:
                continue
    return removed


__all__ = ["CACHE_FOLDER", "cache_dir", "check_cached_upload", "expire_cache", "enforce_file_checks", "guard_handlers", "purge_cache",
           "read_cached_upload", "use_cache"]
