"""Weights: where pretrained weights are found on disk, and the tiny random-init twins (``tiny``).

Find pretrained weights on disk: a local folder/file, or a hub id already in the local HF cache.

Nothing here downloads unless the user allows it (``HF_HUB_OFFLINE`` unset and a network that
answers); every miss becomes a ``MissingWeightsError`` that names the expected place and the
command that fetches the weights, never a stack trace.

May import: ``errors``. ``tiny`` builds each twin from the network definition the real loader
uses, so it also imports four leaf modules of the seams (``rewards.aesthetic_head``,
``rewards.hpsv3_model``, ``rewards.imagereward_model``, ``drpo.mae_latent_layout``), which
import nothing of the package but ``errors``.
"""

from __future__ import annotations

import os
from pathlib import Path

from drpo_bench.errors import MissingWeightsError


#: a weights location that names a tiny random-init twin: ``tiny:<twin>[/<path inside it>]``
TINY_PREFIX = "tiny:"


def tiny_location(location: str) -> Path | None:
    """``tiny:clip`` -> the tiny CLIP folder (built offline and cached by drpo_bench.weights.tiny); else None."""
    if not location.startswith(TINY_PREFIX):
        return None
    from drpo_bench.weights.tiny import folder

    twin, _, inside = location[len(TINY_PREFIX):].partition("/")
    path = folder(twin)
    return path / inside if inside else path


def looks_like_path(name: str) -> bool:
    """A local path (absolute, relative with ./ or ../, home, or an existing entry), not a hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_folder(
    pretrained: str,
    *,
    what: str,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    must_contain: tuple[str, ...] = (),
    hub_id: str | None = None,
) -> Path:
    """A local folder holding ``pretrained``'s files, or ``MissingWeightsError``.

    ``pretrained`` is a local folder, or a hub repo id looked up in the local HF cache (and
    downloaded only when the hub is not marked offline and can be reached). ``must_contain``
    names entries the folder needs (e.g. ``"unet"``), checked so a half-copied folder fails
    here with a clear message rather than deep inside a loader.
    """
    if not pretrained.strip():
        raise MissingWeightsError(f"{what}: `pretrained` is empty; set it to a hub id or a local folder")
    tiny = tiny_location(pretrained)
    if tiny is not None:
        return tiny
    hub_id = hub_id or (pretrained if not looks_like_path(pretrained) else "<repo-id>")
    if looks_like_path(pretrained):
        folder = Path(pretrained).expanduser()
        if not folder.is_dir():
            raise MissingWeightsError(
                f"{what}: no folder at {folder}. Put the weights there, e.g. "
                f"`huggingface-cli download {hub_id} --local-dir {folder}`, or set `pretrained` to a hub id "
                "that is in your Hugging Face cache."
            )
    else:
        folder = _from_hub_cache(pretrained, what=what, revision=revision, allow_patterns=allow_patterns)
    missing = [name for name in must_contain if not (folder / name).exists()]
    if missing:
        raise MissingWeightsError(
            f"{what}: {folder} lacks {', '.join(missing)}; it is not a complete copy. "
            f"Fetch it again, e.g. `huggingface-cli download {hub_id} --local-dir {folder}`."
        )
    return folder


def resolve_file(path: str, *, what: str, how: str) -> Path:
    """A local weight file (or a ``tiny:`` twin's), or ``MissingWeightsError`` saying ``how`` to get it."""
    file = tiny_location(path) or Path(path).expanduser()
    if not file.is_file():
        raise MissingWeightsError(f"{what}: no file at {file}. {how}")
    return file


def _from_hub_cache(repo_id: str, *, what: str, revision: str | None, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    hint = (
        f"Download it where the hub is reachable: `huggingface-cli download {repo_id}"
        + (f" --revision {revision}" if revision else "")
        + f" --local-dir models/{repo_id.split('/')[-1]}` and set `pretrained: models/{repo_id.split('/')[-1]}`, "
        "or fill the Hugging Face cache (HF_HOME) with the same command without --local-dir. "
        f"(No local folder {Path(repo_id).resolve()} exists either.)"
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=allow_patterns))
    except Exception as cached_miss:  # LocalEntryNotFoundError, bad repo id, ...
        if hub_offline():
            raise MissingWeightsError(
                f"{what}: {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {hint}"
            ) from cached_miss
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as download_error:
        raise MissingWeightsError(
            f"{what}: {repo_id!r} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(download_error).__name__}). {hint}"
        ) from download_error


def resolve_weight_file(location: str, *, what: str, hub_repo: str, filename: str, how: str = "") -> Path:
    """A weight file: ``location`` if given (a local file), else ``hub_repo/filename`` from the HF cache.

    ``how`` is the download hint shown when the file is missing; by default the
    ``huggingface-cli download`` command for ``hub_repo``.
    """
    how = how or (
        f"Fetch it: `huggingface-cli download {hub_repo} {filename} --local-dir models/` and point the "
        f"config at models/{filename}."
    )
    if location:
        return resolve_file(location, what=what, how=how)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_repo, filename, local_files_only=True))
    except Exception as cached_miss:
        if hub_offline():
            raise MissingWeightsError(
                f"{what}: {hub_repo}/{filename} is not in the local Hugging Face cache (HF_HUB_OFFLINE is set). {how}"
            ) from cached_miss
    try:
        return Path(hf_hub_download(hub_repo, filename))
    except Exception as download_error:
        raise MissingWeightsError(
            f"{what}: {hub_repo}/{filename} is not cached and could not be downloaded "
            f"({type(download_error).__name__}). {how}"
        ) from download_error
