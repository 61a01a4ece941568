"""The JSON API's shapes: an OpenAI-style chat completion request, checked field by field, and the responses.

    POST /v1/chat/completions
    {"messages": [{"role": "user", "content": "Where was the founder born?"}], "stream": false,
     "max_tokens": 64, "temperature": 0.0, "seed": 42, "model": "refrag/synthetic_refrag"}

The question is the last user message (earlier turns are not shown to the model: it was fine-tuned on one
question per conversation). Beside OpenAI's fields the response carries `documents` (what the model was shown,
numbered [1], [2], ... across hops), `hops` (REFRAG: each hop's query and its document numbers) and
`citations` (the documents the answer cites). Every rejection is an ApiError: a status and a reason that says
which field is wrong and why, in OpenAI's error shape; nothing else reaches the client.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

FINISH_REASON = {"stop_token": "stop", "max_tokens": "length", "context": "length", "cancelled": "stop"}


class ApiError(Exception):
    """A request the server answers with `status` and a reason (never a traceback)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_question_chars: int = 2000
    max_tokens: int = 256       # most answer tokens a request may ask for
    default_max_tokens: int = 64
    max_body_bytes: int = 1_000_000


@dataclass
class ChatRequest:
    question: str
    stream: bool
    max_tokens: int
    temperature: float
    seed: int


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON: the body is not UTF-8", code="malformed_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", code="malformed_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="malformed_json")
    return body


def _typed(body: dict, name: str, kinds, kind_name: str, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(422, f"'{name}' must be {kind_name}, got {type(value).__name__}", param=name, code="wrong_type")
    return value


def parse_chat_request(body: dict, limits: Limits, served_models: set[str]) -> ChatRequest:
    """Check a decoded request body field by field -> ChatRequest, or ApiError naming the field."""
    model = _typed(body, "model", (str,), "a string", None)
    if model is not None and model not in served_models:
        raise ApiError(404, f"unknown model {model!r}: this server serves {', '.join(sorted(served_models))}",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(422, "'messages' is required: a list of {\"role\", \"content\"} objects", param="messages",
                       code="missing_field")
    if not isinstance(messages, list):
        raise ApiError(422, f"'messages' must be a list, got {type(messages).__name__}", param="messages", code="wrong_type")
    question = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(422, f"messages[{i}] must be an object, got {type(m).__name__}", param=f"messages[{i}]",
                           code="wrong_type")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise ApiError(422, f"messages[{i}].role must be a string", param=f"messages[{i}].role", code="wrong_type")
        if not isinstance(content, str):
            raise ApiError(422, f"messages[{i}].content must be a string, got {type(content).__name__}",
                           param=f"messages[{i}].content", code="wrong_type")
        if role not in ("system", "user", "assistant"):
            raise ApiError(422, f"messages[{i}].role must be system, user or assistant, got {role!r}",
                           param=f"messages[{i}].role", code="invalid_value")
        if role == "user":
            question, where = content, i
    if question is None:
        raise ApiError(400, "no user message: the question is the last message with role 'user'", param="messages",
                       code="missing_question")
    question = question.strip()
    if not question:
        raise ApiError(400, "the question is empty", param=f"messages[{where}].content", code="empty_question")
    if len(question) > limits.max_question_chars:
        raise ApiError(413, f"the question has {len(question)} characters; the limit is {limits.max_question_chars}",
                       param=f"messages[{where}].content", code="question_too_long")
    stream = _typed(body, "stream", (bool,), "true or false", False)
    max_tokens = _typed(body, "max_tokens", (int,), "an integer", limits.default_max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(422, f"'max_tokens' must be between 1 and {limits.max_tokens}, got {max_tokens}",
                       param="max_tokens", code="invalid_value")
    temperature = float(_typed(body, "temperature", (int, float), "a number", 0.0))
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise ApiError(422, f"'temperature' must be between 0 and 2, got {temperature}", param="temperature",
                       code="invalid_value")
    seed = _typed(body, "seed", (int,), "an integer", 42)
    if not 0 <= seed < 2 ** 63:
        raise ApiError(422, f"'seed' must be between 0 and 2**63 - 1, got {seed}", param="seed", code="invalid_value")
    return ChatRequest(question, stream, max_tokens, temperature, seed)


# ---- responses

def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def retrieval_fields(answer_or_prepared) -> dict:
    return {"documents": answer_or_prepared.documents, "hops": answer_or_prepared.hops}


def citation_list(answer) -> list[dict]:
    return [{"n": d["n"], "id": d["id"], "doc_id": d["doc_id"], "title": d["title"], "hop": d["hop"]}
            for d in answer.cited_documents()]


def completion_body(cid: str, model: str, answer) -> dict:
    """A whole chat.completion: OpenAI's fields plus documents, hops and citations."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": FINISH_REASON.get(answer.stopped, "stop")}],
            "usage": {"prompt_tokens": answer.num_prompt_tokens, "completion_tokens": answer.num_tokens,
                      "total_tokens": answer.num_prompt_tokens + answer.num_tokens},
            **retrieval_fields(answer), "citations": citation_list(answer)}


def chunk_body(cid: str, model: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    """One chat.completion.chunk of a stream; the first carries documents and hops, the last citations."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def sse(data) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
