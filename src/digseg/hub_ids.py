"""Which names are Hugging Face Hub ids (one rule for every place that reads a name as a path or a Hub id), and
`check_hub_id`: one line at once where diffusers and transformers would retry for a minute."""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

from .errors import DigsegError, first_line


def looks_like_hub_id(name: str | os.PathLike[str], canonical: bool = False) -> bool:
    """'org/name' (with `canonical`, also 'name') as the Hub's `validate_repo_id` accepts it; else a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return False
    return canonical or "/" in str(name)


def hub_id_or_none(name: str | os.PathLike[str] | None, canonical: bool = False) -> str | None:
    """`name` if it reads as a Hub id (`looks_like_hub_id`) and is no path here, else None."""
    if not name or Path(name).expanduser().exists() or not looks_like_hub_id(name, canonical):
        return None
    return str(name)


def check_hub_id(repo_id: str, what: str, filename: str, local_hint: str, revision: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None,
                 local_files_only: bool = False, named_as_hub_id: bool = False) -> None:
    """Return when Hub id `repo_id` can be loaded: `filename` (e.g. "unet/config.json") is cached, or one request
    without retries finds the Hub answering for it. Else a one-line DigsegError saying why `what` cannot be had, and
    to pass `local_hint`. `named_as_hub_id`: the name itself says it is a Hub id (open_clip's "hf-hub:")."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return
    lead = (f"{what} {repo_id!r} (a Hugging Face Hub id)" if named_as_hub_id else
            f"{what} {repo_id!r} is not a folder here, so it was looked up as a Hugging Face Hub id")
    not_cached = f"it is not in the local cache ({cache_dir or constants.HF_HUB_CACHE})"
    advice = f"pass {local_hint}, or run once with network to cache it"
    why = "local_files_only=True" if local_files_only else "offline mode: HF_HUB_OFFLINE is set"
    offline_now = any(os.environ.get(var, "").strip().upper() in constants.ENV_VARS_TRUE_VALUES
                      for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # set since huggingface_hub's import
    if local_files_only or constants.HF_HUB_OFFLINE or offline_now:  # where huggingface_hub would refuse to ask
        raise DigsegError(f"{lead}: {not_cached} and the Hub is not asked ({why}); {advice}")
    network_errors = [OSError]  # sockets, and the transport errors of huggingface_hub's HTTP client
    for module in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError, AttributeError):
            network_errors.append(importlib.import_module(module).TransportError)
    try:
        url = hf_hub_url(repo_id, filename, revision=revision)
        get_hf_file_metadata(url, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT)  # one request, no retries
    except GatedRepoError:
        return  # the loader says how to get access
    except RepositoryNotFoundError:
        raise DigsegError(f"{lead}: the Hub has no repository {repo_id!r} (or it is private: log in with "
                          f"`hf auth login`); pass {local_hint}") from None
    except RevisionNotFoundError:
        raise DigsegError(f"{lead}: the Hub repository has no revision {revision!r}; pass one it has, or "
                          f"{local_hint}") from None
    except (EntryNotFoundError, HfHubHTTPError):
        return  # the Hub answered for the repository; the loader names what is missing or wrong
    except tuple(network_errors) as exc:
        raise DigsegError(f"{lead}: {not_cached} and the Hub cannot be reached ({first_line(exc)}); "
                          f"{advice}") from None
