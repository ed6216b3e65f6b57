"""`raytev train --push_to_hub`: upload the exported model folder to a Hugging Face Hub model repo."""

from __future__ import annotations

from pathlib import Path

from raytev.errors import RaytevError


def push_model(folder: Path, repo_id: str | None = None, private: bool | None = None,
               keep_local: tuple[str, ...] = ()) -> str:
    """Create the Hub repo (if new) and upload `folder` to it; the repo's URL. A failure is a RaytevError."""
    repo_id = repo_id or folder.name
    # Hidden entries are staging leftovers of an interrupted export or save, never part of the model.
    ignore_patterns = [*keep_local, ".*"]
    from huggingface_hub import HfApi

    api = HfApi()
    step = f"creating the Hub repo '{repo_id}'"
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        step = f"uploading {folder} to the Hub repo '{repo_id}'"
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, ignore_patterns=ignore_patterns)
    except Exception as error:  # the hub raises many types (offline, auth, invalid name, HTTP): all mean this
        reason = (str(error).splitlines() or [""])[0][:300]
        excluded = " ".join(f"--exclude '{pattern}'" for pattern in ignore_patterns)
        raise RaytevError(
            f"--push_to_hub: {step} failed ({type(error).__name__}: {reason}). The trained model is safe at "
            f"{folder}; log in (`hf auth login`) or fix --hub_model_id, then upload it with "
            f"`hf upload {repo_id} {folder} {excluded}`.") from error
    return str(url)
