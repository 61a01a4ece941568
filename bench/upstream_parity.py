"""Parity with upstream nanochat's own forward, for both pinned eras, side by side with the targets.

    python -m bench.upstream_parity

Fixtures: tests/fixtures/nanochat_upstream/<era>/ (upstream's code wrote the checkpoint, the tokenizer.pkl,
and the reference ids and logits; see its README). Each era is loaded through the project's load_model
(--source base), exactly as a user's NANOCHAT_BASE_DIR would be. Rows:
- fp32 / bf16 checkpoint: max |logit diff| over both inputs (upstream's vocabulary; the 8 appended
  special tokens are extra columns) and argmax agreement over the full row;
- token ids: the evaluation texts and the tokenizer cases, against upstream's ids;
- "shared tensors only": what loading without the era's options gives (the issue's before-state).
With tiktoken importable (it is not a project dependency), the converted tokenizer is also compared with
tiktoken on generated text.
"""
import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.gpt import GPT, GPTConfig

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nanochat_upstream"
ERAS = {"2025-11": "2025-11-16788ee", "2026-07": "2026-07-92d63d4"}
TARGET_DIFF = 1e-3


def forward_all(model, ids_list):
    with torch.no_grad():
        return [model(torch.tensor([ids]))[0] for ids in ids_list]


def compare(outs, refs, V):
    diff = max((o[:, :V] - r).abs().max().item() for o, r in zip(outs, refs))
    agree = sum((o.argmax(-1) == r.argmax(-1)).sum().item() for o, r in zip(outs, refs))
    total = sum(r.size(0) for r in refs)
    return diff, agree / total


def shared_tensors_only(d, ref):
    """The before-state: a default GPTConfig from the era's shared fields, loading whatever tensors fit."""
    meta = json.loads(next((d / "base_checkpoints" / "d4").glob("meta_*.json")).read_text())
    fields = {k: v for k, v in meta["model_config"].items() if k in {f.name for f in dataclasses.fields(GPTConfig)}
              and k != "window_pattern"}
    model = GPT(GPTConfig(**fields))
    model.init_weights()
    state = torch.load(next((d / "base_checkpoints" / "d4").glob("model_*.pt")), weights_only=True)
    own = model.state_dict()
    V = fields["vocab_size"]
    fit = {k: (v[:V] if k in ("transformer.wte.weight", "lm_head.weight") else v) for k, v in state.items() if k in own}
    model.load_state_dict(fit, strict=False)
    return model.eval()


def tiktoken_check(d, n_texts=2000):
    try:
        import pickle
        import tiktoken  # noqa: F401  (only to unpickle upstream's file the way upstream does)
    except ImportError:
        return None
    from nanochat.tokenizer import Tokenizer
    enc = pickle.loads((d / "tokenizer" / "tokenizer.pkl").read_bytes())  # trusted fixture, tiktoken installed
    tok = Tokenizer.from_directory(d / "tokenizer")
    rng = random.Random(0)
    pieces = list("abcdefghijklmnopqrstuvwxyz ABC0123456789.,;:'!?\n\t-éü東🙂") + ["the ", "ing ", "  ", "'s"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) for _ in range(n_texts)]
    same = sum(enc.encode_ordinary(t) == tok.encode(t) for t in texts)
    return same, len(texts)


def main():
    rows = []
    for era, folder in ERAS.items():
        d = FIXTURES / folder
        ref = json.loads((d / "reference.json").read_text(encoding="utf-8"))
        logits = torch.load(d / "reference.pt", weights_only=True)
        V = ref["vocab_size"]
        t0 = time.time()
        model, tok, meta = load_model("base", "cpu", "eval", model_tag="d4", base_dir=d)
        load_s = time.time() - t0
        ids = [tok.encode(t, prepend="<|bos|>") for t in ref["texts"]]
        ids_ok = ids == ref["ids"] and all(tok.encode(c["text"]) == c["ids"] for c in ref["tokenizer_cases"])
        n_cases = len(ref["ids"]) + len(ref["tokenizer_cases"])
        diff, agree = compare(forward_all(model, ref["ids"]), logits["logits"], V)
        m16, _, _ = load_model("base", "cpu", "eval", model_tag="d4_bf16", base_dir=d)
        diff16, agree16 = compare(forward_all(m16, ref["ids"][:1]), [logits["logits_bf16_short"]], V)
        before_diff, before_agree = compare(forward_all(shared_tensors_only(d, ref), ref["ids"]), logits["logits"], V)
        tk = tiktoken_check(d)
        rows.append((era, folder.split("-")[-1], diff, agree, diff16, agree16, ids_ok, n_cases, before_diff,
                     before_agree, tk, load_s, meta["vocab_growth"]["to"]))

    print(f"Parity with upstream nanochat's forward (CPU, fp32); target: max|diff| <= {TARGET_DIFF:g}, argmax 100%, "
          f"ids identical\n")
    head = f"{'era':<9}{'commit':<9}{'max|diff| fp32':>15}{'argmax':>8}{'max|diff| bf16':>16}{'argmax':>8}" \
           f"{'token ids':>14}{'| shared only:':>16}{'max|diff|':>10}{'argmax':>8}"
    print(head)
    print("-" * len(head))
    ok = True
    for era, commit, diff, agree, diff16, agree16, ids_ok, n, bdiff, bagree, tk, load_s, vocab in rows:
        print(f"{era:<9}{commit:<9}{diff:>15.2e}{agree:>8.1%}{diff16:>16.2e}{agree16:>8.1%}"
              f"{('same ' + str(n) + '/' + str(n)) if ids_ok else 'DIFFERENT':>14}{'':>16}{bdiff:>10.3f}{bagree:>8.1%}")
        ok &= diff <= TARGET_DIFF and agree == 1.0 and diff16 <= TARGET_DIFF and agree16 == 1.0 and ids_ok
    print(f"{'target':<18}{TARGET_DIFF:>15.0e}{'100%':>8}{TARGET_DIFF:>16.0e}{'100%':>8}{'identical':>14}")
    print()
    for era, *_, tk, load_s, vocab in rows:
        tk_text = "tiktoken not installed (not a project dependency): skipped" if tk is None else \
            f"converted tokenizer == tiktoken on {tk[0]}/{tk[1]} generated texts"
        print(f"{era}: load_model {load_s:.2f}s, vocabulary 300 -> {vocab} (project special tokens appended); {tk_text}")
    print(f"\n{'PASS' if ok else 'FAIL'}: both eras within target")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
