"""The guide's interactive RAG loop as a command.

    python -m scripts.rag_chat --knowledge_base data/my_kb --retriever_type dense [--source rag --model_tag TAG]
    printf 'When was Zorvik Labs founded?\nquit\n' | python -m scripts.rag_chat --knowledge_base data/my_kb

Reads questions from stdin until quit / exit / end of input; for each prints `Assistant: ...`
and `[Sources: title1, title2, title3]`.
"""
from __future__ import annotations

import sys

from nanochat.cli import ArgumentParser
from nanochat.retrieval.registry import RETRIEVERS


def chat_turn(engine, retriever, query: str, top_k: int = 5, max_tokens: int = 200,
              system: str | None = None,
              max_doc_length: int = -1, abstain_threshold: float | None = None):
    """Retrieve, build the guide's conversation, generate -> (answer, documents). With abstain_threshold, an
    answer whose mean token probability is below it becomes the abstention sentence (nanochat.rag.confidence)."""
    from nanochat.rag.conversation import SYSTEM_PROMPT  # the prompt the model was fine-tuned with
    system = system or SYSTEM_PROMPT
    docs = retriever.retrieve(query, top_k=top_k)
    doc_dicts = [d.to_dict() for d in docs]
    if max_doc_length > 0:
        from nanochat.rag.evaluation import truncate_docs
        doc_dicts = truncate_docs(doc_dicts, max_doc_length)
    conversation = {"messages": [{"role": "system", "content": system},
                                 {"role": "retrieval", "documents": doc_dicts},
                                 {"role": "user", "content": query}]}
    response, _ = engine.generate_from_conversation(conversation, max_tokens=max_tokens)
    if abstain_threshold is not None:
        from nanochat.rag.confidence import answer_confidence, apply_threshold
        conf = answer_confidence(engine.model, engine.tokenizer, conversation, response, max_tokens)
        response = apply_threshold(response, conf, abstain_threshold)
    return response.strip(), docs


def main(argv=None, stdin=None, stdout=None):
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = ArgumentParser(description="Interactive RAG chat over a knowledge base")
    parser.add_argument("--knowledge_base", required=True, help="KB directory (same KB as training)")
    parser.add_argument("--retriever_type", default="simple", choices=list(RETRIEVERS), help="retriever")
    parser.add_argument("--top_k", type=int, default=None, help="documents per question (default: the fine-tune's, else 5)")
    parser.add_argument("--source", default="rag", help="checkpoint family: rag | refrag | base | mid")
    parser.add_argument("--model_tag", default=None, help="checkpoint tag (default: largest model)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    parser.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR)")
    parser.add_argument("--max_tokens", type=int, default=200, help="answer length cap in tokens")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--abstain_threshold", default=None,
                        help="abstain when the answer's mean token probability is below this: a number or the "
                             "calibration.json written by scripts.rag_eval --abstain_threshold auto")
    args = parser.parse_args(argv)
    from nanochat.rag.confidence import resolve_threshold
    threshold = resolve_threshold(args.abstain_threshold)

    from nanochat.checkpoint_manager import load_model
    from nanochat.engine import Engine
    from nanochat.retrieval import RetrievalManager
    from nanochat.train.loop import set_threads
    set_threads(-1, args.device if args.device != "auto" else "cpu")
    model, tokenizer, meta = load_model(args.source, device=args.device, phase="eval", model_tag=args.model_tag,
                                        step=args.step, base_dir=args.base_dir)
    retriever = RetrievalManager(retriever_type=args.retriever_type, knowledge_base_path=args.knowledge_base)
    engine = Engine(model, tokenizer)
    train_args = meta.get("args", {})
    top_k = args.top_k or train_args.get("top_k") or 5
    max_doc_length = train_args.get("max_doc_length") or -1

    print("RAG Chat (type 'quit' to exit)", file=stdout, flush=True)
    while True:
        print("\nYou: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            break
        query = line.strip()
        if query.lower() in ("quit", "exit"):
            break
        if not query:
            continue
        response, docs = chat_turn(engine, retriever, query, top_k, args.max_tokens,
                                   max_doc_length=max_doc_length, abstain_threshold=threshold)
        print(f"Assistant: {response}", file=stdout)
        print(f"\n[Sources: {', '.join(d.title for d in docs[:3])}]", file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
