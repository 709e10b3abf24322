"""The error raised when pretrained weights cannot be had offline, and how it is told apart from other failures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from monai_shpeft.errors import InputError

__all__ = ["PretrainedWeightsUnavailableError"]

# huggingface_hub retries a failing download for ~25 s per file; one HEAD request answers "is the hub there" quickly.
_HUB_PROBE_TIMEOUT_S = 10.0


class PretrainedWeightsUnavailableError(InputError, RuntimeError):
    """Raised when the weights of a pretrained tag cannot be fetched (typically: no network and no cached copy)."""


def _hub_unreachable_reason(repo_id: str, filenames: Sequence[str], cache_dir: str | os.PathLike | None) -> str | None:
    """Say why the hub cannot serve ``repo_id``, or ``None`` when a download may work (or a cached copy exists).

    huggingface_hub retries network errors with exponential backoff (about 25 s per file, and the libraries try two
    files), so an offline machine would wait close to a minute before failing. This asks the same question with one
    request, using huggingface_hub's own code (proxies, endpoint and ``HF_HUB_OFFLINE`` are honoured) and no retries.
    """
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # the libraries then use plain URL downloads, which fail fast by themselves
        return None
    hub_cache_dir = None if cache_dir is None else os.fspath(cache_dir)
    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir), str):
            return None  # the library will pick the cached copy up
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filenames[-1]), timeout=_HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return None  # the hub answered (e.g. a 404 or gated repo): let the library report it
    except Exception as err:  # DNS failure, refused connection, timeout, offline mode
        return f"{type(err).__name__}: {err}"
    return None


def _is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a network/hub failure rather than a model error."""
    network_types: tuple[type[BaseException], ...] = (OSError,)
    with contextlib.suppress(ImportError):
        import httpx2

        network_types += (httpx2.TransportError,)
    with contextlib.suppress(ImportError):
        import httpx

        network_types += (httpx.TransportError,)
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, network_types):
            return True
        current = current.__cause__ or current.__context__
    # open_clip re-raises download errors as a plain RuntimeError with this text.
    return "Failed to download" in str(err)


def _unavailable_error(
    backbone: str, tag: str, repo_id: str, filenames: Sequence[str], cause: str, quick_gelu: bool = False
) -> PretrainedWeightsUnavailableError:
    """An error naming the model and tag and saying exactly how to use a local copy of the weights instead."""
    if repo_id:
        where = f"https://huggingface.co/{repo_id}"
        files = " or ".join(f"'{f}'" for f in reversed(filenames))
        how = (
            f"On a connected machine download {files} of the Hugging Face repository {repo_id} ({where}; e.g. "
            f"`hf download {repo_id} {filenames[-1]}`), copy it here and pass its path instead of the tag: "
            f"build_classifier({backbone!r}, ..., pretrained='/path/to/{filenames[-1]}'"
        )
    else:
        how = (
            f"On a connected machine fetch the weights of {backbone} tag {tag!r}, save them as a .safetensors or .pt "
            f"state dict and pass its path instead of the tag: build_classifier({backbone!r}, ..., "
            "pretrained='/path/to/weights.safetensors'"
        )
    how += ", force_quick_gelu=True)" if quick_gelu else ")"
    if quick_gelu:
        how += " (these weights were trained with QuickGELU)"
    return PretrainedWeightsUnavailableError(
        f"Could not download the pretrained weights of {backbone} with tag {tag!r}: the Hugging Face Hub could not "
        f"be reached and no cached copy exists (offline?). {how}. Cause: {cause}"
    )
