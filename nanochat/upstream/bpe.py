"""tiktoken-style BPE ranks <-> a HuggingFace `tokenizers` byte-level BPE with the same ids.

Upstream nanochat's tokenizer is a tiktoken Encoding: token bytes -> rank (= id), a split regex, and
special tokens after the ranks. The project's Tokenizer wraps a HF BPE, so an upstream tokenizer is
rebuilt as one: the vocabulary is the ranks (bytes spelled with the byte-level alphabet), the merges are
every (left, right) pair of tokens whose concatenation is a token, ordered by that token's rank, and
`ignore_merges` returns a pre-token that is itself a token directly, as tiktoken does. Ids are kept as
they are; tests/test_upstream.py checks them against upstream's on the fixtures.
"""
from __future__ import annotations

import json
from functools import lru_cache

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    """The byte-level alphabet: printable bytes stand for themselves, the rest for code points 256 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    to_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            to_char[b] = chr(b)
        else:
            to_char[b] = chr(256 + extra)
            extra += 1
    return to_char, {c: b for b, c in to_char.items()}


def spell(token: bytes) -> str:
    to_char, _ = byte_alphabet()
    return "".join(to_char[b] for b in token)


def unspell(token: str) -> bytes:
    _, to_byte = byte_alphabet()
    return bytes(to_byte[c] for c in token)


def hf_from_ranks(pat_str: str, ranks: dict[bytes, int], special_tokens: dict[str, int]) -> HFTokenizer:
    """A HF byte-level BPE giving the ids tiktoken gives for these ranks; special tokens keep their ids.

    Ranks and special ids together must be 0..N-1, each once (upstream's: ranks first, then the specials;
    this project's: specials first).
    """
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"ranks lack {len(missing)} single-byte tokens (e.g. {bytes(missing[:3])!r}); "
                         f"a byte-level BPE needs all 256")
    ids = sorted([*ranks.values(), *special_tokens.values()])
    if ids != list(range(len(ids))):
        raise ValueError("ranks and special token ids must together be 0..N-1, each once")
    vocab = {spell(tok): rank for tok, rank in ranks.items()}
    vocab.update(special_tokens)  # so the special tokens keep their ids wherever they sit
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges += [(spell(a), spell(b)) for a, b in pairs]
    hf = HFTokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=False, unk_token=None, fuse_unk=False,
                         ignore_merges=True))
    hf.normalizer = None
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = None
    add_special_tokens(hf, special_tokens)
    return hf


def add_special_tokens(hf: HFTokenizer, special_tokens: dict[str, int]) -> None:
    """Mark special tokens at exactly the given ids: ones already in the vocabulary keep theirs, new ones must
    continue it without gaps."""
    for name, want in sorted(special_tokens.items(), key=lambda kv: kv[1]):
        if hf.token_to_id(name) is None and want != hf.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"special token {name!r} has id {want}, but the next free id is "
                             f"{hf.get_vocab_size(with_added_tokens=True)}: ids must follow the vocabulary without gaps")
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        if hf.token_to_id(name) != want:
            raise ValueError(f"special token {name!r} got id {hf.token_to_id(name)}, expected {want}")


def ranks_from_hf(hf: HFTokenizer) -> tuple[str, dict[bytes, int], dict[str, int]]:
    """A byte-level HF BPE -> (split regex, ranks, special tokens), for writing a tiktoken Encoding.

    Raises ValueError naming what a tiktoken Encoding cannot hold (another pre-tokenizer, non-byte-level tokens).
    """
    spec = json.loads(hf.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model is {model.get('type')!r}; a tiktoken Encoding holds byte-level BPE only")
    patterns = split_patterns(spec.get("pre_tokenizer"))
    if len(patterns) != 1:
        raise ValueError(f"expected one split regex in the pre-tokenizer, found {len(patterns)}")
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = {}
    for token, idx in model["vocab"].items():
        if token in added:
            continue
        try:
            ranks[unspell(token)] = idx
        except KeyError:
            raise ValueError(f"token {token!r} (id {idx}) is not spelled in the byte-level alphabet") from None
    return patterns[0], ranks, added


def split_patterns(node) -> list[str]:
    """Every regex string under a pre-tokenizer's JSON (Split patterns are stored as {"Regex": ...})."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Regex" and isinstance(value, str):
                found.append(value)
            else:
                found += split_patterns(value)
    elif isinstance(node, list):
        for value in node:
            found += split_patterns(value)
    return found
