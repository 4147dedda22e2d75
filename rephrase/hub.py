"""Push a run's `OUT/dataset/` (dataset card + `data/*.parquet`) to a Hugging Face Hub dataset repo.

Why plain `create_commit` batches rather than `upload_folder`: in huggingface_hub 2.x `upload_large_folder` is gone
and `upload_folder` either streams through Xet in commits whose size it picks itself, or (without `hf_xet`, or with
`HF_HUB_DISABLE_XET=1`) sends everything in one commit that nothing retries. Batches of `max_files_per_commit` files
behave the same with or without Xet (Xet or LFS only changes how large files travel inside `create_commit`), keep
every commit under the Hub's advice of < 100 files, and let the card land last, once the data it describes is there.

Resume needs no local state: the remote tree is the state. Before committing, local files are compared with the
branch (LFS sha256, or git blob sha1 for small files), and only what is missing or different is sent; an
interrupted push is resumed by running it again. Large files already pre-uploaded by a killed run are not sent
twice either: the LFS batch / Xet dedup answers "already present". Nothing is written under `OUT/`.

Remote files under `data/` that the local dataset lacks (shards of an earlier, larger run) are deleted just before
the card is committed: the card loads `data/*.parquet`, so a stale shard would silently join the dataset. Other
remote files are left alone.

The token comes from `token=`, else huggingface_hub's own resolution (`HF_TOKEN`, then the stored `hf auth login`
token); it is only ever handed to `HfApi`, never logged, printed or written.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_FILES_PER_COMMIT = 50
"""Half the Hub's "commit size < 100 files" (huggingface.co/docs/hub/repositories-recommendations): parquet shards
are large, so a commit's cost is its bytes; 50 shards keeps a commit well inside the server's commit timeout."""
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""The statuses huggingface_hub's own `http_backoff` retries: rate limits and transient server errors."""
ATTEMPTS = 5
"""Tries per Hub call (create repo/branch, each commit). Inside a commit, pre-upload and LFS requests are already
retried 5 times by `http_backoff`, so a dead Hub costs at most 5 x 6 requests per commit, never an endless loop."""
MAX_WAIT_S = 300.0
"""Longest wait between tries, also for a longer Retry-After (the hourly commit rate limit): after the last try the
push fails, and rerunning it later resumes where it stopped."""


class PushError(RuntimeError):
    """The push cannot start: nothing to push, no token, or it would put private data in a public repo."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    url: str
    uploaded: tuple[str, ...]
    """Paths sent by this push, data shards first and the card last."""
    unchanged: tuple[str, ...]
    """Paths already on the branch with identical bytes, so not sent (a resumed or repeated push)."""
    deleted: tuple[str, ...]
    """Stale `data/` files removed from the branch because the local dataset no longer has them."""
    commits: int


def dataset_files(out: Path) -> dict[str, Path]:
    """Repo path -> local file for everything under `OUT/dataset/` except hidden paths (`.cache/`, `.git/`...)."""
    root = out / "dataset"
    if not (root / "README.md").is_file() or not any((root / "data").rglob("*.parquet")):
        raise PushError(f"{root} has no README.md or no data/*.parquet to push; run `rephrase run` first")
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path
    return files


def push_dataset(
    out: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
) -> PushResult:
    """Create the dataset repo (and `revision` branch) if needed and make it hold exactly `OUT/dataset/`.

    `private` applies when the repo is created; asking for it on an existing public repo raises before anything is
    sent, since create_repo(exist_ok=True) never changes visibility. `revision` is a branch, made from main if it
    does not exist. `endpoint` defaults to HF_ENDPOINT (huggingface.co). Rerunning after a failure resumes.
    """
    if max_files_per_commit < 1:
        raise ValueError(f"max_files_per_commit must be at least 1, got {max_files_per_commit}")
    files = dataset_files(out)
    token = token or get_token()
    if token is None:
        raise PushError("no Hub token: set HF_TOKEN or log in with `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)

    url = prepare_repo(api, repo_id, private=private, revision=revision)
    tree = api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
    remote = {entry.path: entry for entry in tree if isinstance(entry, RepoFile)}
    unchanged = {p for p, local in files.items() if _same_bytes(remote.get(p), local)}
    data = [p for p in files if p not in unchanged and p != "README.md"]
    card = [] if "README.md" in unchanged else ["README.md"]
    stale = sorted(p for p in remote if p.startswith("data/") and p not in files)
    # data first, then stale shards dropped, the card last: it lands once the data it describes is all there
    operations = [(p, files[p]) for p in data] + [(p, None) for p in stale] + [(p, files[p]) for p in card]
    batches = [operations[i : i + max_files_per_commit] for i in range(0, len(operations), max_files_per_commit)]
    logger.info(
        "push to %s: sending %d files, %d already there, deleting %d stale, in %d commits",
        url,
        len(data) + len(card),
        len(unchanged),
        len(stale),
        len(batches),
    )
    for i, batch in enumerate(batches, 1):
        message = f"Upload dataset with rephrase ({i}/{len(batches)})"
        _retrying(f"commit {i}/{len(batches)}", partial(_commit, api, repo_id, revision, batch, message))
        logger.info("commit %d/%d: %d operations", i, len(batches), len(batch))
    return PushResult(
        repo_id=repo_id,
        revision=revision or "main",
        url=str(url),
        uploaded=tuple(data + card),
        unchanged=tuple(p for p in files if p in unchanged),
        deleted=tuple(stale),
        commits=len(batches),
    )


def prepare_repo(api: HfApi, repo_id: str, *, private: bool, revision: str | None) -> str:
    """Create the repo and branch if missing; refuse private data for an existing public repo. Returns its URL."""
    url = _retrying(
        "create repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    )
    if private and _retrying("repo info", lambda: api.repo_info(repo_id, repo_type="dataset")).private is False:
        raise PushError(
            f"{repo_id} already exists and is public; --private does not change an existing repo. Make it private on "
            "the Hub first, or push to another --repo-id"
        )
    if revision is not None:
        _retrying(
            "create branch", lambda: api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        )
        url = f"{url}/tree/{quote(revision, safe='')}"
    return str(url)


def _same_bytes(remote: RepoFile | None, local: Path) -> bool:
    """Whether the branch already holds `local`: the Hub lists LFS/Xet files by sha256, small files by git sha1."""
    size = local.stat().st_size
    if remote is None or remote.size != size:
        return False
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with local.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return remote.lfs.sha256 == sha256.hexdigest() if remote.lfs else remote.blob_id == sha1.hexdigest()


def _commit(
    api: HfApi, repo_id: str, revision: str | None, batch: list[tuple[str, Path | None]], message: str
) -> None:
    """One commit, with operations built afresh on every try since create_commit mutates them. A retry after a
    commit that landed but whose answer was lost is harmless: create_commit skips files the branch already holds."""
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=local) if local else CommitOperationDelete(path)
        for path, local in batch
    ]
    api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset", revision=revision)


def _retrying(what: str, call: Callable[[], T]) -> T:
    """Run `call`, retrying Hub answers in RETRY_STATUSES up to ATTEMPTS times, each retry logged."""
    retrying = Retrying(
        retry=retry_if_exception(_is_retryable),
        wait=_wait,
        stop=stop_after_attempt(ATTEMPTS),
        before_sleep=partial(_log_retry, what),
        reraise=True,
    )
    return retrying(call)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in RETRY_STATUSES


def _wait(state: RetryCallState) -> float:
    """The Hub's Retry-After when it sends one (429s do), else 1, 2, 4, 8 s; never more than MAX_WAIT_S."""
    exc = state.outcome.exception() if state.outcome else None
    retry_after = exc.response.headers.get("Retry-After", "") if isinstance(exc, HfHubHTTPError) else ""
    seconds = float(retry_after) if retry_after.isdigit() else 2.0 ** (state.attempt_number - 1)
    return min(seconds, MAX_WAIT_S)


def _log_retry(what: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else "?"
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "%s: Hub answered HTTP %s; try %d of %d in %.0f s", what, status, state.attempt_number + 1, ATTEMPTS, wait
    )
