"""An optional abstention threshold at inference: when the model's own confidence in an answer (the mean
probability of its tokens) is below a threshold calibrated on validation questions, the answer is replaced by
the abstention sentence.

Why on top of learned abstention: a model trained to abstain still answers some questions it cannot answer; its
token probabilities on those answers are lower than on the answers it copies from a document it found. The
threshold turns that into abstentions, at a controlled cost in correct answers abstained on.

    conf = answer_confidence(model, tokenizer, conversation, answer)         # mean token probability in (0, 1]
    cal = calibrate_threshold(confidences, correct, max_false_abstention=0.05)  # on val questions
    text = apply_threshold(answer, conf, cal["threshold"])                   # eval, chat (and a server)

The calibration is saved as JSON ({"threshold": ..., ...}); `resolve_threshold` reads a number or such a file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nanochat.rag.metrics import ABSTAIN_ANSWER, is_abstention


@torch.no_grad()
def token_probabilities(model, prompt: list[int], answer: list[int]) -> list[float]:
    """p(answer token | prompt, earlier answer tokens) for each answer token, by one teacher-forced forward pass."""
    if not answer:
        return []
    ids = torch.tensor([prompt + answer], dtype=torch.long, device=model.get_device())
    targets = torch.full_like(ids, -1)
    targets[0, len(prompt) - 1:-1] = ids[0, len(prompt):]
    nll = model(ids, targets, loss_reduction="none").view(-1)[len(prompt) - 1:ids.size(1) - 1]
    return torch.exp(-nll.float()).tolist()


def prompt_ids(model, tokenizer, conversation: dict, max_tokens: int) -> list[int]:
    """The prompt as Engine.generate_from_conversation renders it (documents shortened to leave max_tokens)."""
    seq_len = model.config.sequence_len
    return tokenizer.render_for_completion(conversation, max_tokens=max(seq_len - max_tokens, seq_len // 2))


def answer_confidence(model, tokenizer, conversation: dict, answer: str, max_tokens: int = 32) -> float:
    """Mean token probability of an answer text under the model (nan for an empty answer).

    Answers are compared as the model writes them: with the leading space of a copied span (" Paris [1]") or
    without (the abstention sentence); the tokenisation the model finds likelier is scored.
    """
    text = answer.strip()
    if not text:
        return math.nan
    prompt = prompt_ids(model, tokenizer, conversation, max_tokens)
    best = None
    for variant in (" " + text, text):
        probs = token_probabilities(model, prompt, tokenizer.encode(variant))
        logp = sum(math.log(max(p, 1e-30)) for p in probs)
        if best is None or logp > best[0]:
            best = (logp, sum(probs) / len(probs))
    return float(best[1])


def apply_threshold(answer: str, confidence: float, threshold: float | None) -> str:
    """The answer, or the abstention sentence when its confidence is below the threshold (None = no threshold)."""
    if threshold is None or is_abstention(answer) or math.isnan(confidence) or confidence >= threshold:
        return answer
    return ABSTAIN_ANSWER


def calibrate_threshold(confidences: list[float], correct: list[bool], max_false_abstention: float = 0.05) -> dict:
    """The threshold that turns the most wrong answers into abstentions while abstaining on at most
    max_false_abstention of the correct ones -> {"threshold", "n", "n_correct", "kept_correct", "dropped_wrong",
    "false_abstention", "max_false_abstention"}. Abstentions and answers without a confidence are left out.

    Candidate thresholds are the observed confidences (a threshold t abstains on every confidence < t); 0.0 (never
    abstain) is the fallback, so calibration can only help on the calibration set.
    """
    pairs = [(float(c), bool(ok)) for c, ok in zip(confidences, correct) if not math.isnan(float(c))]
    n_ok = sum(ok for _, ok in pairs)
    best = (0, 0.0, 0.0)  # (dropped wrong, -false abstention, threshold)
    for t in sorted({c for c, _ in pairs}):
        dropped_ok = sum(ok and c < t for c, ok in pairs)
        false_abst = dropped_ok / n_ok if n_ok else 0.0
        if false_abst > max_false_abstention:
            break  # higher thresholds only drop more correct answers
        dropped_wrong = sum((not ok) and c < t for c, ok in pairs)
        if (dropped_wrong, -false_abst) > best[:2]:
            best = (dropped_wrong, -false_abst, t)
    threshold = best[2]
    dropped_ok = sum(ok and c < threshold for c, ok in pairs)
    return {"threshold": threshold, "n": len(pairs), "n_correct": n_ok, "kept_correct": n_ok - dropped_ok,
            "dropped_wrong": best[0], "false_abstention": dropped_ok / n_ok if n_ok else 0.0,
            "max_false_abstention": max_false_abstention}


def resolve_threshold(value) -> float | None:
    """A threshold from a flag: None / "" / "none" -> None, a number, or a calibration JSON file's "threshold"."""
    if value is None or str(value).strip().lower() in ("", "none", "off"):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"abstention threshold: {value!r} is neither a number nor a calibration file")
    data = json.loads(path.read_text(encoding="utf-8"))
    if "threshold" not in data:
        raise ValueError(f"{path}: field 'threshold' missing (expected a calibration written by scripts.rag_eval)")
    return float(data["threshold"])
