"""Write a project model back in upstream nanochat's layout, or say exactly what cannot be represented there.

    <out>/<kind>_checkpoints/<tag>/model_<step:06d>.pt, meta_<step:06d>.json   (upstream's GPTConfig fields only)
    <out>/tokenizer/tokenizer.pkl, token_bytes.pt                              (a tiktoken Encoding, byte counts)

Representable: attention layers only, no copy head, the options of one upstream era (eras.era_differences),
and a tokenizer that tiktoken's rank-order BPE reproduces on sample text. Rotary-table rounding differs by
device even upstream, so it is reported as a note, never a blocker.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nanochat.common import atomic_path, atomic_write_json
from nanochat.upstream.eras import ERAS, era_differences
from nanochat.upstream.tokenizer_pkl import PICKLE_FILE, EncodingState, read_encoding, write_encoding

UPSTREAM_ERAS = ("2025-11", "2026-07")
TOKEN_BYTES_FILE = "token_bytes.pt"
# text the exported tokenizer must encode exactly as the project's does
CHECK_TEXTS = ["The quick brown fox jumps over the lazy dog.", "numbers 1234567 and 3.14159, dates 2026-07-03",
               "Ünïcödé, naïve café, 東京, emoji 🙂", "  spaces\tand\nnew\r\nlines\n\n", "it's they'll we've I'M",
               "literal <|bos|> stays text", "!!!???...,,,;;", "a", ""]


class NotRepresentable(ValueError):
    def __init__(self, problems):
        self.problems = problems
        super().__init__("cannot be represented in upstream nanochat:\n" + "\n".join(f"  - {p}" for p in problems))


def encoding_of(tokenizer) -> EncodingState:
    from nanochat.upstream.bpe import ranks_from_hf
    pat, ranks, specials = ranks_from_hf(tokenizer.tok)
    return EncodingState("rustbpe", pat, ranks, specials)


def plan_export(model, tokenizer, era: str | None = None, texts=None) -> tuple[str, list[str]]:
    """-> (era, notes), or NotRepresentable listing every reason (blocks, copy head, era options, tokenizer)."""
    config, problems, notes = model.config, [], []
    mamba = [i for i, kind in enumerate(config.block_pattern) if kind != "T"]
    if mamba:
        problems.append(f"layers {mamba} are Mamba blocks (block_pattern {','.join(config.block_pattern)}); "
                        f"upstream nanochat has attention layers only")
    if config.copy_head:
        problems.append("the copy head (copy_head.q, copy_head.k, copy_head.gate) has no upstream counterpart; "
                        "upstream's lm_head alone computes a different distribution")
    candidates = [era] if era else list(UPSTREAM_ERAS)
    differences = {e: era_differences(config, e) for e in candidates}
    fitting = [e for e in candidates if not differences[e]]
    if not fitting:
        problems += [f"{ERAS[e].description} differs: {'; '.join(d)}" for e, d in differences.items()]
    chosen = fitting[0] if fitting else candidates[0]
    want_bf16 = ERAS[chosen].options.get("rotary_bf16", False)
    if config.rotary_bf16 != want_bf16:
        notes.append(f"rotary tables: this model rounds them to bf16={config.rotary_bf16}, {ERAS[chosen].description} "
                     f"{'always does' if want_bf16 else 'does on bf16 GPUs only'}; upstream's logits differ slightly from ours "
                     f"(cos/sin rounding only: 1.9e-3 at most on a 2-layer test model)")
    try:
        enc = encoding_of(tokenizer)
        mismatches = tokenizer_mismatches(tokenizer, enc, texts or CHECK_TEXTS)
        if mismatches:
            problems.append(f"tokenizer: tiktoken's rank-order BPE encodes {len(mismatches)} of the check texts "
                            f"differently, e.g. {mismatches[0]!r}")
    except ValueError as e:
        problems.append(f"tokenizer: {e}")
    if problems:
        raise NotRepresentable(problems)
    return chosen, notes


def tokenizer_mismatches(tokenizer, enc: EncodingState, texts) -> list[str]:
    """Texts that the tiktoken Encoding (rebuilt as HF with tiktoken's semantics) encodes differently."""
    from nanochat.upstream.bpe import hf_from_ranks
    hf = hf_from_ranks(enc.pat_str, enc.mergeable_ranks, enc.special_tokens)
    hf.encode_special_tokens = True
    return [t for t in texts if hf.encode(t, add_special_tokens=False).ids != tokenizer.encode(t)]


def export_checkpoint(model, tokenizer, out_dir, model_tag: str, step: int, kind: str = "base",
                      era: str | None = None, lineage: dict | None = None, texts=None) -> dict:
    """Write the model and tokenizer under out_dir in upstream's layout; returns what was written."""
    era, notes = plan_export(model, tokenizer, era, texts)
    out_dir = Path(out_dir)
    enc = encoding_of(tokenizer)
    tok_dir = out_dir / "tokenizer"
    if (tok_dir / PICKLE_FILE).is_file():
        existing = read_encoding(tok_dir / PICKLE_FILE)
        if (existing.mergeable_ranks, existing.special_tokens) != (enc.mergeable_ranks, enc.special_tokens):
            raise ValueError(f"{tok_dir / PICKLE_FILE} holds a different tokenizer; upstream keeps one tokenizer per "
                             f"base dir, so export to another --output")
    tok_dir.mkdir(parents=True, exist_ok=True)
    write_encoding(tok_dir / PICKLE_FILE, enc)
    special_ids = set(enc.special_tokens.values())
    by_id = {i: len(b) for b, i in enc.mergeable_ranks.items()}
    counts = [0 if i in special_ids else by_id[i] for i in range(enc.n_vocab)]
    with atomic_path(tok_dir / TOKEN_BYTES_FILE) as tmp:
        torch.save(torch.tensor(counts, dtype=torch.int32), tmp)

    config = model.config
    model_config = {k: getattr(config, k) for k in ERAS[era].fields}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    ckpt_dir = out_dir / f"{kind}_checkpoints" / model_tag
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt_dir / f"model_{step:06d}.pt") as tmp:
        torch.save(state, tmp)
    meta = {"step": step, "model_config": model_config,
            "user_config": {"exported_by": "nanochat-rag scripts.export_nanochat", "era": ERAS[era].description,
                            "notes": notes, **(lineage or {})}}
    atomic_write_json(ckpt_dir / f"meta_{step:06d}.json", meta)
    return {"era": era, "notes": notes, "checkpoint_dir": str(ckpt_dir), "tokenizer_dir": str(tok_dir),
            "model_config": model_config}
