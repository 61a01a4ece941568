"""A served chat over a knowledge base: the chat page, an OpenAI-style JSON API and a health check.

    python -m scripts.rag_web --knowledge_base data/my_kb --source rag|refrag [--model_tag TAG] [--port 8000]

Open http://127.0.0.1:8000/ for the page; POST /v1/chat/completions for the API (nanochat.serve.app says
what it returns). Requests from many clients are answered together by the batched Engine: up to --batch_size
at once, at most --max_queue waiting (then 503 with Retry-After), each within --timeout seconds.
The REFRAG model runs the hops it was trained with (its checkpoint meta), as scripts.rag_chat does.
"""
from __future__ import annotations

from nanochat.cli import ArgumentParser
from nanochat.retrieval.hop_strategies import offline_choices
from nanochat.retrieval.registry import RETRIEVERS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Served RAG / REFRAG chat (FastAPI + uvicorn)")
    p.add_argument("--knowledge_base", required=True, help="KB directory (same KB as training)")
    p.add_argument("--source", default="rag", choices=("rag", "refrag"), help="checkpoint family")
    p.add_argument("--model_tag", default=None, help="checkpoint tag (default: largest model)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    p.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR)")
    p.add_argument("--retriever_type", default=None, choices=list(RETRIEVERS),
                   help="index to search (default: the fine-tune's when the KB has it, else simple)")
    p.add_argument("--top_k", type=int, default=None, help="documents per question, per hop with refrag (default: the fine-tune's)")
    p.add_argument("--hop_strategy", default=None, choices=offline_choices(),
                   help="refrag: next-hop query strategy (default: the one the model was trained with)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--batch_size", type=int, default=None,
                   help="requests answered together (default: per device, nanochat.engine.DEFAULT_BATCH_SIZE)")
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting at most; more get 503 + Retry-After")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take, queueing included")
    p.add_argument("--max_question_chars", type=int, default=2000, help="longest question accepted (413 beyond)")
    p.add_argument("--max_tokens", type=int, default=64, help="answer tokens when a request does not say")
    p.add_argument("--max_tokens_limit", type=int, default=256, help="most answer tokens a request may ask for")
    p.add_argument("--abstain_threshold", default=None,
                   help="abstain when the answer's mean token probability is below this: a number or the "
                        "calibration.json written by scripts.rag_eval --abstain_threshold auto")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads for torch (-1 = auto)")
    return p


def build_server(args):
    """(app, model name) from the flags: model, knowledge base, pipeline, batcher."""
    from nanochat.engine import default_batch_size
    from nanochat.serve.api import Limits
    from nanochat.serve.app import create_app
    from nanochat.serve.batcher import Batcher
    from scripts.rag_chat import load_pipeline
    pipeline, meta = load_pipeline(args)
    model = pipeline.engine.model
    tag = meta.get("model_tag") or args.model_tag or "model"
    name = f"{args.source}/{tag}"
    batcher = Batcher(pipeline, args.batch_size or default_batch_size(model.get_device()), args.max_queue)
    limits = Limits(max_question_chars=args.max_question_chars, max_tokens=args.max_tokens_limit,
                    default_max_tokens=min(args.max_tokens, args.max_tokens_limit))
    return create_app(batcher, name, limits, args.timeout, aliases={args.source, tag}), name


def main(argv=None):
    args = build_parser().parse_args(argv)
    import uvicorn
    from nanochat.common import setup_logging
    from nanochat.train.loop import set_threads
    setup_logging()
    set_threads(args.num_threads, args.device if args.device != "auto" else "cpu")
    app, name = build_server(args)
    print(f"serving {name} on http://{args.host}:{args.port}/ (API: POST /v1/chat/completions, GET /health)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
