"""Files of a model from another library: a local folder or a Hugging Face Hub repo, safetensors only.

What the ``timm:`` and ``hf:`` sources share: ``org/name@revision`` references, fetching a repo's
files (the local cache only under ``HF_HUB_OFFLINE=1``; one line saying how to download what is
missing), the commit a cached file belongs to, the sha256 of a local file, and the refusal of
pickled weights (``.bin``, ``.pth``: loading them would run arbitrary code).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, NoReturn

from ..errors import FairError
from ..hub import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
from ..untrusted import quote, read_json

# Weight files another library would unpickle (torch.load, numpy's allow_pickle, Keras): never loaded here.
PICKLED_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".npz")
# A Hub repo id: org/name (the Hub's own rule, without its length limit's corner cases).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` as ``("org/name", "revision")``; no ``@``: revision ``None`` (main)."""
    repo, sep, revision = ref.partition("@")
    return repo, (revision if sep and revision else None)


def check_repo_id(repo: str, where: str) -> None:
    if not REPO_ID.fullmatch(repo):
        raise FairError(f"{where}: {quote(repo)} is neither a local folder nor a Hugging Face Hub repo id "
                        f"(org/name, optionally @revision)")


def read_model_json(path: Path, what: str) -> Any:
    """A JSON file of a model (``config.json``, ``preprocessor_config.json``), bounded as fair's own configs."""
    return read_json(path, MAX_CONFIG_BYTES, "fair_core.hub.MAX_CONFIG_BYTES", what,
                     f"limit {MAX_CONFIG_DEPTH} levels, fair_core.hub.MAX_CONFIG_DEPTH")


def commit_of(path: str | Path) -> str | None:
    """The commit of a file in the Hugging Face cache (``.../snapshots/<commit>/file``), else None."""
    path = Path(path)
    for parent in path.parents:
        if parent.parent.name == "snapshots":
            return parent.name
    return None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _download_hint(repo: str, files: str, local_only: bool = False) -> str:
    """How to get what the cache lacks, and why it was not downloaded."""
    command = f"download it with `hf download {repo}{' ' + files if files else ''}`"
    if local_only:
        return command
    return f"{command} ({'HF_HUB_OFFLINE is set' if _offline() else 'the Hub could not be reached'})"


def hub_file(repo: str, filename: str, revision: str | None, where: str, *, local_only: bool = False,
             required: bool = True, why_local: str = "") -> Path | None:
    """``filename`` of the Hub repo ``repo`` at ``revision``, from the local cache (downloaded first
    unless offline or ``local_only``; ``why_local`` says why in the message). A file the repo lacks:
    None when not ``required``; every other failure is one :class:`FairError` line naming
    ``where``, the repo and the file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_only))
    except LocalEntryNotFoundError:  # first: it is an EntryNotFoundError in huggingface_hub >= 1
        raise FairError(f"{where}: {filename} of {repo}{'@' + revision if revision else ''} is not in the local "
                        f"Hugging Face cache{why_local}; {_download_hint(repo, filename, local_only)}") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise FairError(f"{where}: the Hub repo {repo} has no {filename}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise FairError(f"{where}: no Hub repo {repo} (or it is private or gated: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FairError(f"{where}: the Hub repo {repo} has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FairError(f"{where}: cannot get {filename} of {repo}: {first}") from None


def hub_snapshot(repo: str, commit: str, patterns: list[str], where: str) -> Path:
    """The cached folder of ``repo`` at ``commit`` holding the files matching ``patterns``
    (downloaded unless offline; whatever the cache has when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=commit, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise FairError(f"{where}: {repo} at {commit} is not in the local Hugging Face cache; "
                        f"{_download_hint(repo, '')}") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FairError(f"{where}: cannot get the files of {repo}: {first}") from None


def pickled_files(folder: Path) -> list[str]:
    """The names of the weight files in ``folder`` that would need unpickling."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PICKLED_SUFFIXES))


def refuse_pickled(folder: Path, where: str, wanted: str) -> NoReturn:
    """One line when ``folder`` lacks ``wanted`` (safetensors weights): naming the pickled weights it
    has instead, which are refused, or saying that it has no weights."""
    pickled = pickled_files(folder)
    if pickled:
        raise FairError(f"{where}: only safetensors weights are loaded ({wanted}); {folder} has {', '.join(pickled[:3])}, "
                        f"pickled weights that loading would run as code (convert them to safetensors)")
    raise FairError(f"{where}: no {wanted} in {folder}")
