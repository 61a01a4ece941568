"""The served chat: a FastAPI app over a ChatPipeline and its Batcher.

    GET  /                      the chat page (question box, streamed answer, cited sources; no CDN)
    POST /v1/chat/completions   OpenAI-style, with "stream": server-sent events; plus documents, hops, citations
    GET  /v1/models             the one model this server answers with
    GET  /health                status, queue depth, batching counters

Limits: a bounded queue (full -> 503 with Retry-After), a per-request timeout (504, or an error event in a
stream), a maximum question length (413) and body size (413). Bad requests get a 4xx whose reason names the
field (nanochat.serve.api). Any other failure is logged here and answered with a plain 500: no traceback leaves
the server.
"""

import asyncio
import contextlib
import html
import logging
import time
from importlib import resources

from nanochat.serve.api import (ApiError, Limits, chunk_body, completion_body, new_id, parse_chat_request, parse_json,
                                retrieval_fields, sse)
from nanochat.serve.batcher import Batcher, Job, QueueFull

logger = logging.getLogger("nanochat.serve")


def page_html() -> str:
    return resources.files("nanochat.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(batcher: Batcher, model_name: str, limits: Limits | None = None, timeout_s: float = 60.0,
               aliases: set[str] | None = None):
    """The app. model_name names the served model in responses ("refrag/<tag>"); a request's "model" may be
    model_name or one of aliases (e.g. the bare source or tag), anything else is 404."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    served = {model_name} | set(aliases or ())
    pipeline = batcher.pipeline
    started = time.time()
    page = page_html().replace("{{MODEL}}", html.escape(model_name)).replace("{{RETRIEVAL}}", html.escape(pipeline.describe()))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="nanochat RAG chat", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher

    def error_response(e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error_response(ApiError(e.status_code, str(e.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def _unexpected(request, e):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal server error", code="internal_error"))

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page)

    @app.get("/health")
    def health():
        ok = batcher.alive()
        body = {"status": "ok" if ok else "stopped", "model": model_name, "retrieval": pipeline.describe(),
                "queue": {"waiting": batcher.queue.qsize(), "max": batcher.max_queue}, "batch_size": batcher.batch_size,
                "uptime_s": round(time.time() - started, 1), **batcher.stats}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "nanochat-rag"}]}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"the body has {declared} bytes; the limit is {limits.max_body_bytes}", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"the body is over {limits.max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_chat_request(parse_json(await read_body(request)), limits, served)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(req.question, req.max_tokens, req.temperature, req.seed, time.monotonic() + timeout_s,
                  emit=lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)))
        try:
            batcher.submit(job)
        except QueueFull:
            raise ApiError(503, f"the server is busy ({batcher.max_queue} requests waiting); retry later",
                           code="queue_full", headers={"Retry-After": str(batcher.retry_after())}) from None
        cid = new_id()

        async def next_event():
            left = job.deadline - time.monotonic() + 1.0  # the worker reports its own timeouts first
            try:
                return await asyncio.wait_for(events.get(), timeout=max(0.01, left))
            except asyncio.TimeoutError:
                job.cancelled = True
                return "error", (504, "the request timed out before its answer was complete")

        if not req.stream:
            try:
                while True:
                    kind, payload = await next_event()
                    if kind == "done":
                        return JSONResponse(completion_body(cid, model_name, payload))
                    if kind == "error":
                        raise ApiError(payload[0], payload[1], code="timeout" if payload[0] == 504 else None)
            finally:
                job.cancelled = True  # a client gone mid-wait frees its row at the next token

        first = await next_event()  # retrieval done (or a rejection, still answerable with its own status)
        if first[0] == "error":
            job.cancelled = True
            raise ApiError(first[1][0], first[1][1], code="timeout" if first[1][0] == 504 else None)

        async def stream():
            event = first
            try:
                while True:
                    kind, payload = event
                    if kind == "retrieved":
                        yield sse(chunk_body(cid, model_name, {"role": "assistant", "content": ""},
                                             **retrieval_fields(payload)))
                    elif kind == "text":
                        yield sse(chunk_body(cid, model_name, {"content": payload}))
                    elif kind == "done":
                        whole = completion_body(cid, model_name, payload)
                        yield sse(chunk_body(cid, model_name, {}, finish_reason=whole["choices"][0]["finish_reason"],
                                             content=payload.text, citations=whole["citations"], usage=whole["usage"]))
                        yield sse("[DONE]")
                        return
                    else:  # timed out mid-answer: the status line is sent already, so the reason goes in the stream
                        yield sse(ApiError(payload[0], payload[1], code="timeout").body())
                        yield sse("[DONE]")
                        return
                    event = await next_event()
            finally:
                job.cancelled = True

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
