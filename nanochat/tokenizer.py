"""BPE tokenizer and conversation rendering.

A byte-level BPE (HuggingFace `tokenizers`) with nanochat's GPT-4-style split regex, plus the
special tokens that frame a chat: nanochat's set and ours for system prompts, retrieved documents
and retrieval hops. Saved as `tokenizer.json` + `tokenizer_meta.json` (no pickle).

Upstream nanochat's `tokenizer.pkl` (a pickled tiktoken Encoding) is read without running pickle code
(nanochat.upstream.tokenizer_pkl) and rebuilt with the same ids; the special tokens it lacks get the
next ids, and `origin` records them (the model grows rows for them: GPT.grow_vocab).
`content_hash()` identifies a tokenizer by what it does (vocabulary, merges, split regex, special
tokens), whatever file it came from; checkpoints record it and loading checks it.

Special tokens only ever come from `encode_special` / `prepend` / `append` / the renderer: user text
that happens to contain "<|bos|>" is encoded as ordinary text, so documents cannot inject control tokens.

Rendered conversation (one example, before truncation):

    <|bos|>
    <|system_start|>You are helpful.<|system_end|>
    <|retrieval_start|><|doc_start|>[1] Title\\ncontent<|doc_end|>...<|retrieval_end|>
    <|retrieval_start|><|hop_start|>hop query<|doc_start|>[3] ...<|doc_end|><|hop_end|>...<|retrieval_end|>
    <|user_start|>question<|user_end|>
    <|assistant_start|>answer citing [1]<|assistant_end|>     <- mask 1 only on "answer ... [1]<|assistant_end|>"
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from nanochat.common import atomic_write_json, atomic_write_text, get_base_dir, sha256_file, sha256_text

SPECIAL_TOKENS = [
    "<|bos|>",  # every document / conversation starts with this
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # assistant tool call
    "<|output_start|>", "<|output_end|>",  # tool output (not trained on)
    "<|system_start|>", "<|system_end|>",
    "<|retrieval_start|>", "<|retrieval_end|>",
    "<|doc_start|>", "<|doc_end|>",
    "<|hop_start|>", "<|hop_end|>",
]

# nanochat's split: like GPT-4's but numbers split into groups of 1-2 digits (small vocabularies)
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
UPSTREAM_PICKLE = "tokenizer.pkl"  # upstream nanochat's format, read by from_upstream_pickle
ROLES = ("system", "user", "assistant", "retrieval")
OVERFLOW_MODES = ("error", "report")
MIN_DOC_TOKENS = 16  # a document cut shorter than this is dropped instead


class Tokenizer:
    """Thin wrapper over a HF `tokenizers.Tokenizer` with nanochat's method names."""

    def __init__(self, hf_tokenizer: HFTokenizer, origin: dict | None = None):
        self.tok = hf_tokenizer
        self.origin = dict(origin or {})  # where it came from if not trained here (e.g. an upstream tokenizer.pkl)
        self.tok.encode_special_tokens = True  # literal "<|bos|>" in text stays text
        missing = [s for s in SPECIAL_TOKENS if self.tok.token_to_id(s) is None]
        assert not missing, f"tokenizer lacks special tokens {missing}"
        self._special_ids = {s: self.tok.token_to_id(s) for s in SPECIAL_TOKENS}

    # ---- construction / persistence

    @classmethod
    def train_from_iterator(cls, texts, vocab_size: int, show_progress: bool = False) -> "Tokenizer":
        """Train byte-level BPE; vocab_size counts the 256 bytes and the special tokens."""
        min_size = 256 + len(SPECIAL_TOKENS)
        if vocab_size < min_size:
            raise ValueError(f"vocab_size={vocab_size} is too small: it must be at least {min_size} "
                             f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")
        tok = HFTokenizer(BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = None
        trainer = BpeTrainer(vocab_size=vocab_size, show_progress=show_progress, min_frequency=0,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL_TOKENS)
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def from_directory(cls, path) -> "Tokenizer":
        """tokenizer.json (this project's), else tokenizer.pkl (upstream nanochat's)."""
        path = Path(path)
        file = path / TOKENIZER_FILE
        if not file.is_file():
            if (path / UPSTREAM_PICKLE).is_file():
                return cls.from_upstream_pickle(path / UPSTREAM_PICKLE)
            raise FileNotFoundError(f"tokenizer not found: neither {file} nor {path / UPSTREAM_PICKLE} (upstream "
                                    f"nanochat's) exists. Train one with "
                                    f"`python -m scripts.tok_train --knowledge_base KB --output {path}`")
        meta, meta_path = {}, path / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            actual = sha256_file(file)
            if meta.get("sha256") not in (None, actual):
                raise ValueError(f"{file}: sha256 {actual[:12]}… does not match {meta_path} "
                                 f"({meta['sha256'][:12]}…); the directory was modified after saving")
        hf = HFTokenizer.from_file(str(file))
        missing = [s for s in SPECIAL_TOKENS if hf.token_to_id(s) is None]
        if missing:
            raise ValueError(f"{file}: special tokens missing: {missing}; retrain with nanochat.tokenizer")
        return cls(hf, meta.get("origin"))

    @classmethod
    def from_upstream_pickle(cls, path) -> "Tokenizer":
        """Upstream nanochat's tokenizer.pkl, ids kept; the project's special tokens it lacks are appended."""
        from nanochat.upstream.bpe import add_special_tokens, hf_from_ranks
        from nanochat.upstream.tokenizer_pkl import read_encoding
        enc = read_encoding(path)  # refuses any pickle but a tiktoken Encoding, running nothing
        hf = hf_from_ranks(enc.pat_str, enc.mergeable_ranks, enc.special_tokens)
        first = hf.get_vocab_size(with_added_tokens=True)
        added = {name: first + i for i, name in enumerate(s for s in SPECIAL_TOKENS if s not in enc.special_tokens)}
        add_special_tokens(hf, added)
        origin = {"format": "tiktoken-pickle", "pickle_sha256": sha256_file(path), "encoding_name": enc.name,
                  "upstream_vocab_size": enc.n_vocab, "added_special_tokens": added}
        return cls(hf, origin)

    def content_hash(self) -> str:
        """"sha256:..." of what the tokenizer does: vocabulary, merges, split regexes, special tokens (not the file)."""
        from nanochat.upstream.bpe import split_patterns
        spec = json.loads(self.tok.to_str())
        model = spec.get("model", {})
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges", [])]
        added = spec.get("added_tokens", [])
        vocab = {**model.get("vocab", {}), **{t["content"]: t["id"] for t in added}}  # wherever a token is stored
        canon = {"vocab": sorted(vocab.items(), key=lambda kv: kv[1]), "merges": merges,
                 "ignore_merges": bool(model.get("ignore_merges", False)),
                 "special": sorted((t["id"], t["content"]) for t in added if t.get("special")),
                 "split": split_patterns(spec.get("pre_tokenizer"))}
        return "sha256:" + sha256_text(json.dumps(canon, ensure_ascii=False, separators=(",", ":")))

    def save(self, path) -> Path:
        """Write tokenizer.json then tokenizer_meta.json (last, with the json's sha256), atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / TOKENIZER_FILE, self.tok.to_str())
        meta = {"format": "nanochat-bpe", "version": 1, "vocab_size": self.get_vocab_size(),
                "special_tokens": SPECIAL_TOKENS, "split_pattern": SPLIT_PATTERN,
                "sha256": sha256_file(path / TOKENIZER_FILE), "hash": self.content_hash()}
        if self.origin:
            meta["origin"] = self.origin
        atomic_write_json(path / META_FILE, meta)
        return path

    # ---- vocabulary

    def get_vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def get_special_tokens(self) -> list[str]:
        return list(SPECIAL_TOKENS)

    def id_to_token(self, id: int) -> str:
        return self.tok.id_to_token(id)

    def encode_special(self, name: str) -> int:
        id = self._special_ids.get(name)
        if id is None:
            raise KeyError(f"unknown special token {name!r}; known: {SPECIAL_TOKENS}")
        return id

    def get_bos_token_id(self) -> int:
        return self.encode_special("<|bos|>")

    # ---- encode / decode

    def _token_id(self, t) -> int:
        return int(t) if isinstance(t, int) else self.encode_special(t)

    def encode(self, text, prepend=None, append=None) -> list[int] | list[list[int]]:
        """str -> ids; list[str] -> list of ids (batched, multi-threaded). prepend/append: special name or id."""
        pre = [] if prepend is None else [self._token_id(prepend)]
        post = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return pre + self.tok.encode(text, add_special_tokens=False).ids + post
        if isinstance(text, (list, tuple)):
            encs = self.tok.encode_batch_fast(list(text), add_special_tokens=False)
            return [pre + e.ids + post for e in encs]
        raise TypeError(f"encode expects str or list[str], got {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    # ---- conversations

    def render_conversation(self, conversation, max_tokens: int | None = 2048, on_overflow: str = "error"):
        """Conversation -> (ids, mask); mask is 1 only on assistant content and its <|assistant_end|>.

        Over max_tokens, retrieved documents give way first: whole documents are dropped from the end
        of the list (last hop's last document first); the document at the cut is shortened instead when
        at least MIN_DOC_TOKENS of its content remain. System, user and assistant text are never cut:
        with on_overflow="error" (default) a ValueError names the sizes. With on_overflow="report" the
        call returns (ids, mask, info) and, if even that is too long, cuts the tail to max_tokens and
        says so in info (see `_fit`). The default call always returns exactly (ids, mask).
        """
        segments = self._render_segments(_messages(conversation))
        return self._finish(segments, max_tokens, on_overflow)

    def render_for_completion(self, conversation, max_tokens: int | None = None, on_overflow: str = "error") -> list[int]:
        """Prompt ids for generation: a trailing assistant message is dropped, <|assistant_start|> appended."""
        messages = list(_messages(conversation))
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages.pop()
        segments = self._render_segments(messages)
        segments.append(_Seg([self.encode_special("<|assistant_start|>")], 0))
        out = self._finish(segments, max_tokens, on_overflow)
        return out[0] if on_overflow == "error" else (out[0], out[2])

    def _finish(self, segments, max_tokens, on_overflow):
        if on_overflow not in OVERFLOW_MODES:
            raise ValueError(f"on_overflow={on_overflow!r}; expected one of {OVERFLOW_MODES}")
        segments, info = _fit(segments, max_tokens, on_overflow)
        ids, mask = [], []
        for s in segments:
            ids.extend(s.ids)
            mask.extend([s.mask] * len(s.ids))
        if info["cut_tokens"]:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return (ids, mask) if on_overflow == "error" else (ids, mask, info)

    def _render_segments(self, messages) -> list["_Seg"]:
        sp = self.encode_special
        segs = [_Seg([self.get_bos_token_id()], 0)]
        doc_number = 0
        for i, msg in enumerate(messages):
            role = _check_message(i, msg)
            if role == "retrieval":
                segs.append(_Seg([sp("<|retrieval_start|>")], 0))
                if msg.get("multi_hop"):
                    for j, hop in enumerate(msg["hops"]):
                        segs.append(_Seg([sp("<|hop_start|>")] + self.encode(hop["query"]), 0))
                        for k, doc in enumerate(hop["documents"]):
                            doc_number += 1
                            segs.append(self._doc_segment(doc, doc_number, f"message {i}: hop {j}: document {k}"))
                        segs.append(_Seg([sp("<|hop_end|>")], 0))
                else:
                    for k, doc in enumerate(msg["documents"]):
                        doc_number += 1
                        segs.append(self._doc_segment(doc, doc_number, f"message {i}: document {k}"))
                segs.append(_Seg([sp("<|retrieval_end|>")], 0))
            elif role in ("system", "user"):
                text = _text_of(msg["content"], f"message {i} ({role})")
                segs.append(_Seg([sp(f"<|{role}_start|>")] + self.encode(text) + [sp(f"<|{role}_end|>")], 0))
            else:  # assistant: supervised content
                segs.append(_Seg([sp("<|assistant_start|>")], 0))
                content = msg["content"]
                parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
                for j, part in enumerate(parts):
                    kind, text = part.get("type"), part.get("text")
                    if not isinstance(text, str):
                        raise ValueError(f"message {i} (assistant): part {j}: missing string field 'text'")
                    if kind == "text":
                        segs.append(_Seg(self.encode(text), 1))
                    elif kind == "python":
                        segs.append(_Seg(self.encode(text, prepend="<|python_start|>", append="<|python_end|>"), 1))
                    elif kind == "python_output":  # comes from the tool at test time: not supervised
                        segs.append(_Seg(self.encode(text, prepend="<|output_start|>", append="<|output_end|>"), 0))
                    else:
                        raise ValueError(f"message {i} (assistant): part {j}: unknown type {kind!r} "
                                         f"(expected text, python or python_output)")
                segs.append(_Seg([sp("<|assistant_end|>")], 1))
        return segs

    def _doc_segment(self, doc, number: int, where: str) -> "_Seg":
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a dict with 'title' and 'content', got {type(doc).__name__}")
        content = doc.get("content", doc.get("text"))
        if not isinstance(content, str):
            raise ValueError(f"{where}: missing string field 'content'")
        title = doc.get("title") or ""
        header = self.encode(f"[{number}] {title}\n" if title else f"[{number}] ")
        return _Seg([self.encode_special("<|doc_start|>")] + header, 0, doc_number=number,
                    content=self.encode(content), tail=[self.encode_special("<|doc_end|>")])


# -----------------------------------------------------------------------------
# rendering helpers

@dataclass
class _Seg:
    """A run of tokens with one mask value; documents keep content separate so it can be shortened."""
    head: list[int]
    mask: int
    doc_number: int | None = None
    content: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.head + self.content + self.tail


def _messages(conversation) -> list:
    if isinstance(conversation, dict):
        if "messages" not in conversation:
            raise ValueError("conversation: missing field 'messages' (expected {'messages': [...]} or a list)")
        conversation = conversation["messages"]
    if not isinstance(conversation, (list, tuple)):
        raise ValueError(f"conversation: expected a list of messages, got {type(conversation).__name__}")
    return conversation


def _check_message(i: int, msg) -> str:
    """Validate one message; errors name its index. Returns the role."""
    if not isinstance(msg, dict):
        raise ValueError(f"message {i}: expected a dict, got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLES:
        raise ValueError(f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    if role == "retrieval":
        if msg.get("multi_hop"):
            hops = msg.get("hops")
            if not isinstance(hops, list):
                raise ValueError(f"message {i} (retrieval, multi_hop): missing list field 'hops'")
            for j, hop in enumerate(hops):
                if not isinstance(hop, dict) or not isinstance(hop.get("query"), str):
                    raise ValueError(f"message {i} (retrieval): hop {j}: missing string field 'query'")
                if not isinstance(hop.get("documents"), list):
                    raise ValueError(f"message {i} (retrieval): hop {j}: missing list field 'documents'")
        elif not isinstance(msg.get("documents"), list):
            raise ValueError(f"message {i} (retrieval): missing list field 'documents' "
                             f"(or set multi_hop: true with 'hops')")
        return role
    if "content" not in msg or msg["content"] is None:
        raise ValueError(f"message {i} ({role}): missing field 'content'")
    content = msg["content"]
    if role == "assistant" and isinstance(content, list):
        if not all(isinstance(p, dict) for p in content):
            raise ValueError(f"message {i} (assistant): content parts must be dicts with 'type' and 'text'")
    elif role != "assistant":
        _text_of(content, f"message {i} ({role})")
    elif not isinstance(content, str):
        raise ValueError(f"message {i} (assistant): content must be a string or a list of parts")
    return role


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    raise ValueError(f"{where}: content must be a string (or a list of text parts)")


def _fit(segments: list[_Seg], max_tokens: int | None, on_overflow: str):
    """Make the segments fit max_tokens by dropping/shortening documents from the end.

    info: num_tokens (before), dropped_docs (numbers), shortened_docs {number: tokens removed},
    cut_tokens (non-document tokens cut from the tail; only ever non-zero with on_overflow="report").
    """
    total = sum(len(s.ids) for s in segments)
    info = {"num_tokens": total, "max_tokens": max_tokens, "dropped_docs": [], "shortened_docs": {}, "cut_tokens": 0}
    if max_tokens is None or total <= max_tokens:
        return segments, info
    excess = total - max_tokens
    keep = [True] * len(segments)
    for idx in range(len(segments) - 1, -1, -1):
        s = segments[idx]
        if excess <= 0:
            break
        if s.doc_number is None:
            continue
        remaining = len(s.content) - excess
        if remaining >= MIN_DOC_TOKENS:  # shorten this one and stop
            segments[idx] = _Seg(s.head, s.mask, s.doc_number, s.content[:remaining], s.tail)
            info["shortened_docs"][s.doc_number] = excess
            excess = 0
        else:
            keep[idx] = False
            info["dropped_docs"].append(s.doc_number)
            excess -= len(s.ids)
    segments = [s for s, k in zip(segments, keep) if k]
    info["dropped_docs"].sort()
    if excess > 0:
        sizes = _role_sizes(segments)
        if on_overflow == "error":
            raise ValueError(
                f"conversation does not fit max_tokens={max_tokens}: {total} tokens, still {max_tokens + excess} "
                f"after dropping every document ({sizes}); system/user/assistant text is never cut. "
                f"Raise max_seq_len or shorten the question/answer")
        info["cut_tokens"] = excess
    return segments, info


def _role_sizes(segments: list[_Seg]) -> str:
    """A short size summary for overflow errors: assistant (supervised) vs everything else."""
    supervised = sum(len(s.ids) for s in segments if s.mask == 1)
    other = sum(len(s.ids) for s in segments if s.mask == 0)
    return f"{supervised} assistant tokens + {other} prompt tokens"


def get_tokenizer(base_dir=None) -> Tokenizer:
    """The project tokenizer at <base_dir>/tokenizer (base_dir: $NANOCHAT_BASE_DIR or ~/.cache/nanochat)."""
    return Tokenizer.from_directory(get_base_dir(base_dir) / "tokenizer")
