"""Checkpoints: self-contained directories, written atomically, loaded without pickle.

A checkpoint directory holds
- ``model.safetensors``: the weights, as CPU tensors (a GPU-trained model loads anywhere);
- ``tokenizer.json``: the vocabulary, loadable by any Hugging Face tokenizers user;
- ``config.json``: format version, model shape, training settings, corpus hash, metrics,
  and the SHA-256 of every other file, so truncation or corruption is caught on load;
- ``resume.safetensors`` (training checkpoints only): optimizer moments, RNG states and
  the carried recurrent state, with the loop's counters as JSON in its metadata.

Nothing here unpickles: safetensors and JSON cannot carry code, so loading an untrusted
checkpoint cannot run anything.

A save writes a fresh temporary directory, fsyncs it, then swaps it in with two renames
(target -> .target.old, temporary -> target). A crash at any moment leaves either the
previous checkpoint or the new one complete; in the instant between the two renames
only ``.target.old`` exists, and `resolve_dir` falls back to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save

from charnet import __version__
from charnet.checkpoint_files import (MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, check_config, check_header,
                                      expected_shapes, load_weights, model_config, read_json)
from charnet.documents import DEFAULT_START
from charnet.errors import CharnetError, CheckpointError
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

FORMAT = "charnet"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, TOKENIZER, RESUME = "config.json", "model.safetensors", "tokenizer.json", "resume.safetensors"
MAX_DOCUMENT_START = 256
"""Longest ``corpus.document_start`` a checkpoint may record (a separator is short)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- atomic directory writes ------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms; nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _old(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def recover(target: Path) -> None:
    """Finish a swap interrupted between its two renames."""
    old = _old(target)
    if old.is_dir() and not target.exists():
        os.replace(old, target)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `target` atomically.

    On any error the temporary directory is removed and `target` is left as it was; an
    OSError (disk full, permission denied) becomes a `CheckpointError`.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-write
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise CheckpointError(f"cannot save checkpoint {target}: {e.strerror or e}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; servers may run as another user
        _fsync_path(tmp)
        old = _old(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot save checkpoint {target}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(path: Path, data: bytes) -> str:
    """Write, flush and fsync one file; return its SHA-256. Python's own file I/O
    raises on a failed write (disk full), which a library writing on its own might not."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- saving -------------------------------------------------------------------------------

def _weights(model: CharRNN, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "head.weight" and model.config.tie_embeddings:
            continue  # the same tensor as embed.weight; safetensors stores it once
        t = t.detach().to("cpu")
        tensors[name] = (t.to(dtype) if dtype is not None else t).contiguous()
    return tensors


@dataclass
class ResumeState:
    """Everything beyond the weights that continuing a run exactly needs."""

    tensors: dict[str, torch.Tensor]
    """Optimizer moments (``optim.<param>.<key>``), RNG states (``rng.*``) and the
    recurrent state carried into the next window (``carry.<i>``)."""

    meta: dict[str, Any]
    """Counters and settings as JSON: step, elapsed time, best loss, param groups..."""


def save_checkpoint(
    target: Path,
    model: CharRNN,
    vocab: Vocab,
    info: dict[str, Any],
    resume: ResumeState | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a checkpoint directory atomically; `info` goes into config.json as-is
    (``training``, ``corpus``, ``metrics``...)."""
    weights = _weights(model, dtype)
    stored = next(iter(weights.values())).dtype
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    with atomic_directory(target) as tmp:
        files = {WEIGHTS: _write(tmp / WEIGHTS, save(weights, metadata=header)),
                 TOKENIZER: _write(tmp / TOKENIZER, vocab.to_json().encode("utf-8"))}
        if resume is not None:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in resume.tensors.items()}
            files[RESUME] = _write(tmp / RESUME, save(tensors, metadata={"charnet": json.dumps(resume.meta)}))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "charnet_version": __version__,
            "model": model.config.to_dict(),
            "dtype": str(stored).removeprefix("torch."),
            "tokenizer": {"kind": vocab.kind, "vocab_size": vocab.size, "unk_id": vocab.unk_id},
            **info,
            "files": files,
        }
        _write(tmp / CONFIG, (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# -- loading ------------------------------------------------------------------------------

def resolve_dir(path: Path) -> Path:
    """The checkpoint directory `path` names: itself, its interrupted-swap fallback, or
    the best (else last) checkpoint of a run directory."""
    path = Path(path)
    for candidate in (path, _old(path), path / "best", _old(path / "best"), path / "last", _old(path / "last")):
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    raise CheckpointError(f"{path}: not a charnet checkpoint (no {CONFIG}, and no best/ or last/ inside)")


def read_config(directory: Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint directory."""
    path = directory / CONFIG
    config = read_json(path, MAX_CONFIG_BYTES)
    check_config(path, config, FORMAT)
    version = config["format_version"]
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {version} by charnet {config.get('charnet_version', '?')}; "
            f"this charnet {__version__} reads up to format {FORMAT_VERSION}, so upgrade charnet"
        )
    return config


def _verified(directory: Path, config: dict[str, Any], name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    expected = config.get("files", {}).get(name)  # check_config: a string, if there
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(f"{path}: truncated or corrupt (its SHA-256 does not match {CONFIG})")
    return path


@dataclass(kw_only=True)
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its vocabulary and its config.json."""

    path: Path
    model: CharRNN
    vocab: Vocab
    config: dict[str, Any]
    resume: ResumeState | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.get("metrics", {})

    @property
    def document_start(self) -> str:
        """What an empty prompt primes the model with (`charnet.documents.document_start`),
        `DEFAULT_START` where config.json records nothing usable."""
        start = (self.config.get("corpus") or {}).get("document_start")
        if not (isinstance(start, str) and 0 < len(start) <= MAX_DOCUMENT_START):
            return DEFAULT_START
        try:
            start.encode("utf-8")  # JSON can spell a lone surrogate, which no text holds
        except UnicodeEncodeError:
            return DEFAULT_START
        return start


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu", *, with_resume: bool = False) -> Checkpoint:
    """Load and verify a checkpoint (or the best one of a run directory).

    Weights are kept in float32 for computing whatever dtype they were stored in.
    Raises `CheckpointError` with one line naming the file and the problem.
    """
    directory = resolve_dir(Path(path))
    config = read_config(directory)
    model_cfg = model_config(directory / CONFIG, config["model"])
    weights_path = _verified(directory, config, WEIGHTS)
    check_header(weights_path, expected_shapes(model_cfg))

    tok_path = _verified(directory, config, TOKENIZER)
    tokenizer = read_json(tok_path, MAX_TOKENIZER_BYTES)
    if not isinstance(tokenizer, dict):
        raise CheckpointError(f"{tok_path}: not a tokenizer (a JSON object is expected)")
    try:
        vocab = Vocab.from_json(json.dumps(tokenizer))
    except CharnetError as e:
        raise CheckpointError(f"{tok_path}: {e}") from None
    except BaseException as e:  # tokenizers raises plain Exceptions, and panics, on malformed JSON
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{tok_path}: corrupt ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if vocab.size != model_cfg.vocab_size:
        raise CheckpointError(f"{tok_path}: has {vocab.size} tokens but the model expects {model_cfg.vocab_size}")

    model = CharRNN(model_cfg)
    model.load_state_dict(load_weights(weights_path), strict=not model_cfg.tie_embeddings)
    model.to(device).eval()

    resume = None
    if with_resume:
        resume_path = _verified(directory, config, RESUME)
        try:
            from safetensors import safe_open
            with safe_open(resume_path, framework="pt") as f:
                meta = json.loads((f.metadata() or {})["charnet"])
                resume = ResumeState({k: f.get_tensor(k) for k in f.keys()}, meta)
        except (SafetensorError, OSError, KeyError, TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{resume_path}: truncated or corrupt ({e})") from None
    return Checkpoint(path=directory, model=model, vocab=vocab, config=config, resume=resume)


# -- finding checkpoints by name ----------------------------------------------------------

def checkpoint_roots() -> list[Path]:
    """Where names are looked up: the folders in ``$CHARNET_CHECKPOINTS`` (separated like
    PATH) when it is set; otherwise ./checkpoints and the checkpoints/ folder of the
    source checkout charnet runs from (the bundled models)."""
    if env := os.environ.get("CHARNET_CHECKPOINTS"):
        roots = [Path(p) for p in env.split(os.pathsep) if p]
    else:
        roots = [Path.cwd() / "checkpoints", Path(__file__).resolve().parent.parent / "checkpoints"]
    return list(dict.fromkeys(r.resolve() for r in roots))


def available() -> dict[str, Path]:
    """Checkpoint name -> directory, over every root (earlier roots win)."""
    found: dict[str, Path] = {}
    for root in checkpoint_roots():
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / CONFIG).is_file() and d.name not in found:
                    found[d.name] = d
    return found


def find(spec: str | Path) -> Path:
    """A checkpoint given by path, or by name under the checkpoint roots."""
    path = Path(spec).expanduser()
    if path.exists() or _old(path).exists():
        return resolve_dir(path)
    names = available()
    if str(spec) in names:
        return names[str(spec)]
    listing = ", ".join(names) or "none"
    raise CheckpointError(f"{spec}: no such checkpoint path or name (available names: {listing})")
