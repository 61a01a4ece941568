"""Train the BPE tokenizer on a knowledge base's text (plus optional extra text files).

    python -m scripts.tok_train --knowledge_base data/my_kb --vocab_size 4096 --output tok/

A small vocabulary (a few thousand) keeps the embedding table and the softmax cheap on a CPU;
training on the KB itself means titles, names and numbers in the documents become few tokens.
"""
from __future__ import annotations

import time
from pathlib import Path

from nanochat.cli import ArgumentParser, output_dir
from nanochat.common import get_base_dir, print0, setup_logging


def kb_texts(kb_path):
    """Every chunk of the KB as 'title\\ncontent' (what the model will later read in retrieval messages)."""
    from nanochat.retrieval.kb import KnowledgeBase
    kb = KnowledgeBase.load(kb_path)
    for title, content in zip(kb.chunks["title"].fillna(""), kb.chunks["content"].fillna("")):
        yield f"{title}\n{content}"


def extra_texts(paths):
    """Plain-text files, one paragraph per blank-line-separated block (or .jsonl with a 'text' field)."""
    import json
    for p in paths:
        p = Path(p)
        if p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        rec = json.loads(line)
                        if "text" not in rec:
                            raise ValueError(f"{p}:{line_no}: field 'text' missing")
                        yield rec["text"]
        else:
            yield from (b for b in p.read_text(encoding="utf-8").split("\n\n") if b.strip())


def main(argv=None):
    setup_logging()
    parser = ArgumentParser(description="Train a BPE tokenizer on the knowledge base text")
    parser.add_argument("--knowledge_base", required=True, help="KB directory (python -m nanochat.retrieval output)")
    parser.add_argument("--vocab_size", type=int, default=4096, help="vocabulary size incl. special tokens")
    parser.add_argument("--extra_text", nargs="*", default=[], help="extra .txt/.jsonl files to train on")
    parser.add_argument("--output", type=output_dir, default=None, help="tokenizer directory (default: <base_dir>/tokenizer)")
    parser.add_argument("--base_dir", default=None, help="default $NANOCHAT_BASE_DIR or ~/.cache/nanochat")
    args = parser.parse_args(argv)

    from nanochat.tokenizer import Tokenizer
    out = Path(args.output) if args.output else get_base_dir(args.base_dir) / "tokenizer"
    texts = list(kb_texts(args.knowledge_base)) + list(extra_texts(args.extra_text))
    t0 = time.time()
    tok = Tokenizer.train_from_iterator(iter(texts), args.vocab_size)
    tok.save(str(out))
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(tok.encode(t)) for t in texts)
    print0(f"tokenizer: vocab {tok.get_vocab_size()} trained on {len(texts)} texts ({n_chars:,} chars) "
           f"in {time.time() - t0:.1f}s; {n_chars / max(1, n_tokens):.2f} chars/token -> {out}")
    return out


if __name__ == "__main__":
    main()
