"""`run.push_to_hub: REPO`: a trained model folder (its components, model card naming the repository, config.yaml and
log.jsonl) uploaded to a Hugging Face Hub model repository with huggingface_hub's token."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, DigsegError, first_line
from ..pipelines.model_card import CARD_FILE, read_card_facts, write_model_card


def check_hub_target(repo_id: str) -> None:
    """ConfigError, before a run trains, for a repository id the Hub would refuse or when no token is found."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"run.push_to_hub {repo_id!r} is not a Hub repository id (user/name): {exc}") from None
    if not get_token():
        raise ConfigError("run.push_to_hub needs a Hub token with write access: `hf auth login` or HF_TOKEN")


def push_to_hub(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Upload the model in `folder` to `repo_id` (created if needed; `private` None: the Hub's default) -> its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise DigsegError(f"cannot push {folder} to the Hub: it holds no model (model_index.json is missing)")
    write_model_card(folder, read_card_facts(folder), model_id=repo_id)
    index = json.loads((folder / "model_index.json").read_text())
    patterns = ["model_index.json", CARD_FILE, "config.yaml", "log.jsonl",
                *(f"{name}/*" for name in sorted(index) if (folder / name).is_dir())]  # unet/, vae/, ...
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=patterns,
                          repo_type="model", commit_message="Upload DiGSeg model")
    except Exception as exc:  # network, authentication and Hub errors have many types
        raise DigsegError(f"pushing {folder} to the Hub repository {repo_id} failed: {first_line(exc)}") from exc
    return str(url)
