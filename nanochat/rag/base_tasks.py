"""General conversations mixed into fine-tuning to keep chat ability (never given retrieved documents).

SmolTalk is used only when it is already in the local HuggingFace cache (nothing is downloaded);
otherwise users pass their own JSONL files of {"messages": [...]}.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import pandas as pd

from nanochat.data.jsonl import read_jsonl

log = logging.getLogger(__name__)


def _find_smoltalk() -> list[Path]:
    import os
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    files = []
    for name in ("datasets--HuggingFaceTB--smol-smoltalk", "datasets--HuggingFaceTB--smoltalk"):
        files += sorted((home / "hub" / name).glob("snapshots/*/**/train-*.parquet"))
    return files

def _valid_chat(conv, where: str) -> dict:
    msgs = conv.get("messages") if isinstance(conv, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: messages: expected a non-empty list")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{j}]: expected role system/user/assistant with string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError(f"{where}: messages: no assistant message to learn from")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}

def load_base_conversations(base_tasks: str | None, n: int, seed: int) -> list[dict]:
    """Up to n general conversations. base_tasks: None/"auto" (SmolTalk if cached, else warn and skip),
    "smoltalk" (must be cached locally), or comma-separated local JSONL files of {"messages": [...]}."""
    if n <= 0 or base_tasks in ("", "none"):
        return []
    convs = []
    for task in (base_tasks or "auto").split(","):
        task = task.strip()
        if task in ("auto", "smoltalk"):
            files = _find_smoltalk()
            if not files:
                if task == "smoltalk":
                    raise FileNotFoundError("base task 'smoltalk' requested but the HuggingFace dataset is not cached "
                                            "locally (no network downloads here). Pass local JSONL files with "
                                            "--base_tasks a.jsonl,b.jsonl or --base_tasks none")
                log.warning("SmolTalk is not cached locally: continuing without general conversations")
                continue
            df = pd.read_parquet(files[0], columns=["messages"])
            convs += [_valid_chat({"messages": list(m)}, f"{files[0]}:{i}") for i, m in enumerate(df["messages"][: 4 * n])]
        else:
            convs += [_valid_chat(obj, f"{task}:{lineno}") for lineno, obj in read_jsonl(task, what="base task file")]
    random.Random(seed).shuffle(convs)
    return convs[:n]
