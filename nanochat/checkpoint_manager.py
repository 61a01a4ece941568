"""Save and load checkpoints in nanochat's layout.

    <base_dir>/<source>_checkpoints/<model_tag>/
        model_<step:06d>.pt            state_dict (rank 0)
        optim_<step:06d>_rank<r>.pt    optimizer state, one file per rank (optional)
        meta_<step:06d>.json           model_config, step, metrics, tokenizer reference -- written LAST
        tokenizer/                     a copy of the tokenizer, so the directory is self-contained

Every file is written to a temp name and renamed; because meta is written last, a crash mid-save
never produces a step that `find_last_step` would pick. Loads use `torch.load(weights_only=True)`.

Upstream nanochat's checkpoints load too (nanochat.upstream.eras says which era wrote a model_config):
their tokenizer is <base_dir>/tokenizer/tokenizer.pkl, read without running pickle code; the project's
special tokens it lacks are appended and the model grows matching rows (GPT.grow_vocab). Every
checkpoint saved here records its tokenizer's content hash; loading with another tokenizer is an error.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import torch

from nanochat.common import atomic_path, atomic_write_json, get_base_dir, resolve_device, sha256_file
from nanochat.tokenizer import META_FILE, TOKENIZER_FILE, UPSTREAM_PICKLE, Tokenizer, get_tokenizer

logger = logging.getLogger(__name__)

# --source name -> checkpoint family, i.e. the directory <base_dir>/<family>_checkpoints/ (upstream's names)
SOURCES = {"base": "base", "mid": "mid", "sft": "chatsft", "chatsft": "chatsft", "rag": "rag", "refrag": "refrag"}
CREATED_BY = {
    "base": "python -m scripts.base_train --model_tag TAG ..., or upstream nanochat's base training "
            "(scripts/base_train.py, its base_checkpoints/)",
    "mid": "upstream nanochat's mid-training (before Jan 2026; its mid_checkpoints/)",
    "chatsft": "upstream nanochat's chat SFT (scripts/chat_sft.py, its chatsft_checkpoints/)",
    "rag": "python -m scripts.rag_finetune --knowledge_base KB ...",
    "refrag": "python -m scripts.refrag_finetune --knowledge_base KB ...",
}
TOKENIZER_DIR = "tokenizer"


def _model_path(d: Path, step: int) -> Path:
    return d / f"model_{step:06d}.pt"


def _meta_path(d: Path, step: int) -> Path:
    return d / f"meta_{step:06d}.json"


def _optim_path(d: Path, step: int, rank: int) -> Path:
    return d / f"optim_{step:06d}_rank{rank:d}.pt"


# -----------------------------------------------------------------------------
# save / load

def save_checkpoint(checkpoint_dir, step: int, model_data, optimizer_data, meta_data, tokenizer=None, rank: int = 0):
    """Rank 0 writes model, tokenizer copy and meta (last); every rank writes its optimizer shard.

    tokenizer: a Tokenizer or a tokenizer directory; copied once into <checkpoint_dir>/tokenizer/ and
    recorded as meta["tokenizer"] = {"path", "sha256" (of tokenizer.json), "hash" (Tokenizer.content_hash),
    "vocab_size", "origin" (for an upstream tokenizer: its pickle and the special tokens added to it)}.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if optimizer_data is not None:
        with atomic_path(_optim_path(checkpoint_dir, step, rank)) as tmp:
            torch.save(optimizer_data, tmp)
    if rank != 0:
        return
    with atomic_path(_model_path(checkpoint_dir, step)) as tmp:
        torch.save(model_data, tmp)
    meta = dict(meta_data or {})
    if dataclasses.is_dataclass(meta.get("model_config")):
        meta["model_config"] = dataclasses.asdict(meta["model_config"])
    meta.setdefault("step", step)
    if tokenizer is not None:
        meta["tokenizer"] = _save_tokenizer_copy(checkpoint_dir, tokenizer)
    atomic_write_json(_meta_path(checkpoint_dir, step), meta)
    logger.info("saved checkpoint step %d to %s", step, checkpoint_dir)


def _save_tokenizer_copy(checkpoint_dir: Path, tokenizer) -> dict:
    """Copy the tokenizer into the checkpoint dir once; a different tokenizer later is an error."""
    dest = checkpoint_dir / TOKENIZER_DIR
    staging = checkpoint_dir / f".{TOKENIZER_DIR}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(tokenizer, Tokenizer):
        tokenizer.save(staging)
    else:  # a directory holding tokenizer.json (+ meta)
        src = Path(tokenizer)
        Tokenizer.from_directory(src)  # validates
        staging.mkdir(parents=True)
        for name in (TOKENIZER_FILE, META_FILE):
            if (src / name).is_file():
                shutil.copyfile(src / name, staging / name)
    sha = sha256_file(staging / TOKENIZER_FILE)
    if (dest / TOKENIZER_FILE).is_file():
        existing = sha256_file(dest / TOKENIZER_FILE)
        shutil.rmtree(staging)
        if existing != sha:
            raise ValueError(f"{dest}: a different tokenizer (sha256 {existing[:12]}…) is already saved in this "
                             f"checkpoint directory; the new one is {sha[:12]}…. Use a new --model_tag")
    else:
        staging.rename(dest)
    saved = Tokenizer.from_directory(dest)
    ref = {"path": TOKENIZER_DIR, "sha256": sha, "hash": saved.content_hash(), "vocab_size": saved.get_vocab_size()}
    if saved.origin:
        ref["origin"] = saved.origin
    return ref


def load_checkpoint(checkpoint_dir, step: int, device, load_optimizer: bool = False, rank: int = 0):
    """-> (model_data, optimizer_data or None, meta_data). Tensors are mapped to `device`."""
    checkpoint_dir = Path(checkpoint_dir)
    device = resolve_device(device)
    meta_path = _meta_path(checkpoint_dir, step)
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint step {step} not found: {meta_path} does not exist "
                                f"(steps present: {_complete_steps(checkpoint_dir) or 'none'})")
    model_data = torch.load(_model_path(checkpoint_dir, step), map_location=device, weights_only=True)
    optimizer_data = None
    if load_optimizer:
        optimizer_data = torch.load(_optim_path(checkpoint_dir, step, rank), map_location=device, weights_only=True)
    meta_data = json.loads(meta_path.read_text(encoding="utf-8"))
    return model_data, optimizer_data, meta_data


def build_model(checkpoint_dir, step: int, device, phase: str, base_dir=None):
    """Checkpoint -> (model, tokenizer, meta). The model is built on "meta" then filled in place.

    For checkpoints written by other code, meta["era"] names it (nanochat.upstream.eras); for upstream ones
    meta["vocab_growth"] records the rows added for the project's special tokens.
    """
    from nanochat.gpt import GPT
    from nanochat.mamba import building_for
    from nanochat.upstream.eras import PROJECT_ERA, config_from_meta, is_upstream
    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    device = resolve_device(device)
    checkpoint_dir = Path(checkpoint_dir)
    model_data, _, meta = load_checkpoint(checkpoint_dir, step, device)
    if device.type in ("cpu", "mps"):  # bf16 weights from a GPU run: compute in fp32 here
        model_data = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in model_data.items()}
    model_data = {k.removeprefix("_orig_mod."): v for k, v in model_data.items()}  # torch.compile wrapper
    meta_path = _meta_path(checkpoint_dir, step)
    if "model_config" not in meta:
        raise ValueError(f"{meta_path}: missing field 'model_config'")
    config, era = config_from_meta(meta["model_config"], where=str(meta_path))
    if era != PROJECT_ERA:
        meta["era"] = era  # written by other code (upstream nanochat, a fork): say which
    with building_for(device), torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # recomputes non-persistent buffers (rotary tables)
    _check_tensors(model, model_data, era, meta_path)
    model.load_state_dict(model_data, strict=True, assign=True)
    if is_upstream(era):
        tokenizer = _upstream_tokenizer(checkpoint_dir, config, base_dir)
        if tokenizer.get_vocab_size() > config.vocab_size:  # the project's special tokens: new rows
            meta["vocab_growth"] = model.grow_vocab(tokenizer.get_vocab_size())
            meta["vocab_growth"]["tokens"] = tokenizer.origin.get("added_special_tokens", {})
    else:
        tokenizer = _load_tokenizer(checkpoint_dir, meta, base_dir)
    model.train() if phase == "train" else model.eval()
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(f"{checkpoint_dir}: tokenizer has {tokenizer.get_vocab_size()} tokens (hash "
                         f"{tokenizer.content_hash()}) but the model only {model.config.vocab_size}: "
                         f"not the tokenizer this model was trained with")
    return model, tokenizer, meta


def _check_tensors(model, state: dict, era: str, where) -> None:
    """A clear error when a checkpoint's tensors are not the ones its era's model has (instead of load_state_dict's)."""
    from nanochat.upstream.eras import ERAS, known_eras_text
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [f"{k} {have[k]} (expected {want[k]})" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or unexpected or shapes:
        name = ERAS[era].description if era in ERAS else "this project"
        parts = [f"missing {missing[:8]}" if missing else "", f"unexpected {unexpected[:8]}" if unexpected else "",
                 f"wrong shapes {shapes[:8]}" if shapes else ""]
        raise ValueError(f"{where}: its model_config reads as {name}, but the weights do not match that era's model: "
                         f"{'; '.join(p for p in parts if p)}. Known eras:\n{known_eras_text()}")


def _upstream_tokenizer(checkpoint_dir: Path, config, base_dir=None) -> Tokenizer:
    """Upstream keeps one tokenizer per base dir: <base_dir>/tokenizer/tokenizer.pkl (ids kept exactly)."""
    candidates = [checkpoint_dir.parents[1] / TOKENIZER_DIR] if len(checkpoint_dir.parents) > 1 else []
    candidates.append(get_base_dir(base_dir) / TOKENIZER_DIR)
    for d in candidates:
        if (d / UPSTREAM_PICKLE).is_file():
            tokenizer = Tokenizer.from_upstream_pickle(d / UPSTREAM_PICKLE)
            n = tokenizer.origin["upstream_vocab_size"]
            if n != config.vocab_size:
                raise ValueError(f"{d / UPSTREAM_PICKLE} has {n} tokens (hash {tokenizer.content_hash()}) but the "
                                 f"model in {checkpoint_dir} has vocab_size {config.vocab_size}: not its tokenizer")
            return tokenizer
    others = [d for d in candidates if (d / TOKENIZER_FILE).is_file()]
    found = (f"; {others[0]} holds a tokenizer.json (hash {Tokenizer.from_directory(others[0]).content_hash()}), "
             f"made by this project, not the one the model was trained with" if others else "")
    raise ValueError(f"{checkpoint_dir} is an upstream nanochat checkpoint; its tokenizer is upstream's "
                            f"tokenizer.pkl, looked for in {', '.join(str(d) for d in candidates)}{found}. Copy the "
                            f"model's tokenizer/ directory (tokenizer.pkl, token_bytes.pt) from where it was trained")


def _load_tokenizer(checkpoint_dir: Path, meta: dict, base_dir=None) -> Tokenizer:
    """The checkpoint's own tokenizer copy; without one, the base dir's (then the recorded hash must match)."""
    ref = meta.get("tokenizer") or {}
    path = checkpoint_dir / ref["path"] if ref.get("path") else None
    if path is not None and (path / TOKENIZER_FILE).is_file():
        actual = sha256_file(path / TOKENIZER_FILE)
        if actual != ref.get("sha256"):
            raise ValueError(f"{path}: tokenizer sha256 {actual} does not match meta's {ref.get('sha256')}")
        tokenizer = Tokenizer.from_directory(path)
    else:
        tokenizer = get_tokenizer(base_dir)  # older checkpoints, or a copy that went missing
    check_tokenizer(meta, tokenizer, checkpoint_dir)
    return tokenizer


def check_tokenizer(meta: dict, tokenizer: Tokenizer, where="checkpoint") -> None:
    """A model paired with another tokenizer than the one it was saved with is an error naming both hashes."""
    want = (meta.get("tokenizer") or {}).get("hash")
    if want is None:
        return  # checkpoints saved before hashes were recorded
    have = tokenizer.content_hash()
    if have != want:
        raise ValueError(f"{where}: the model was saved with tokenizer {want}, but the tokenizer given is {have}. "
                         f"Token ids would not mean what the model learnt; use the checkpoint's own tokenizer/")


# -----------------------------------------------------------------------------
# finding checkpoints

def _complete_steps(checkpoint_dir: Path) -> list[int]:
    steps = []
    for p in Path(checkpoint_dir).glob("meta_*.json"):
        m = re.fullmatch(r"meta_(\d+)\.json", p.name)
        if m and _model_path(checkpoint_dir, int(m.group(1))).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def find_last_step(checkpoint_dir) -> int:
    """Largest step with both model and meta written (meta goes last, so this step is complete)."""
    steps = _complete_steps(Path(checkpoint_dir))
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint (model_*.pt + meta_*.json) in {checkpoint_dir}")
    return steps[-1]


def find_largest_model(checkpoints_dir) -> str:
    """Model tag to load: the largest depth among tags like d12/d20, else the newest directory."""
    checkpoints_dir = Path(checkpoints_dir)
    tags = [p for p in checkpoints_dir.iterdir() if p.is_dir() and _complete_steps(p)] if checkpoints_dir.is_dir() else []
    if not tags:
        raise FileNotFoundError(f"no model checkpoints found in {checkpoints_dir}")
    depths = [(int(m.group(1)), p.name) for p in tags if (m := re.fullmatch(r"d(\d+)", p.name))]
    if depths:
        return max(depths)[1]
    return max(tags, key=lambda p: p.stat().st_mtime).name


def checkpoints_root(source: str, base_dir=None) -> Path:
    """<base_dir>/<family>_checkpoints/ of a --source name (sft -> chatsft_checkpoints, as upstream writes it)."""
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}: expected one of {sorted(SOURCES)}")
    return get_base_dir(base_dir) / f"{SOURCES[source]}_checkpoints"


def checkpoint_dir_of(source: str, model_tag: str, base_dir=None) -> Path:
    """The directory one checkpoint lives in: a --source name and tag, or a --source that is a directory."""
    if source not in SOURCES and Path(source).is_dir():
        return Path(source)
    return checkpoints_root(source, base_dir) / model_tag


def load_model(source: str, device, phase: str, model_tag: str | None = None, step: int | None = None,
               base_dir=None):
    """The guide's entry point: load_model("rag", device="cuda", phase="eval") -> (model, tokenizer, meta).

    source: base | mid | sft | rag | refrag, or a path to one checkpoint directory.
    """
    device = resolve_device(device)  # "cuda" without a GPU fails here, naming the cpu option
    if source in SOURCES:
        kind = SOURCES[source]
        checkpoints_dir = checkpoints_root(source, base_dir)
        if not checkpoints_dir.is_dir():
            raise FileNotFoundError(f"no '{source}' checkpoints: {checkpoints_dir} does not exist. It is created by "
                                    f"{CREATED_BY[kind]} (base dir: --base_dir or $NANOCHAT_BASE_DIR)")
        if model_tag is None:
            model_tag = find_largest_model(checkpoints_dir)
        checkpoint_dir = checkpoints_dir / model_tag
        if not checkpoint_dir.is_dir():
            have = sorted(p.name for p in checkpoints_dir.iterdir() if p.is_dir())
            raise FileNotFoundError(f"model_tag '{model_tag}' not found: {checkpoint_dir} does not exist "
                                    f"(tags present: {have or 'none'})")
    elif Path(source).is_dir():
        checkpoint_dir = Path(source)
    else:
        raise ValueError(f"unknown checkpoint source {source!r}: expected one of {sorted(SOURCES)} "
                         f"or an existing checkpoint directory")
    if step is None:
        step = find_last_step(checkpoint_dir)
    logger.info("loading %s step %d on %s", checkpoint_dir, step, device)
    return build_model(checkpoint_dir, step, device, phase, base_dir=base_dir)
