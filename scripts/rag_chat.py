"""The guide's interactive RAG loop as a command.

    python -m scripts.rag_chat --knowledge_base data/my_kb --retriever_type dense [--source rag --model_tag TAG]
    python -m scripts.rag_chat --knowledge_base data/my_kb --retriever_type bm25 --source refrag
    printf 'When was Zorvik Labs founded?\nquit\n' | python -m scripts.rag_chat --knowledge_base data/my_kb

Reads questions from stdin until quit / exit / end of input; for each prints `Assistant: ...` and
`[Sources: [n] title, ...]` (the documents the answer cites, else all it was shown). With a REFRAG model
(--source refrag) each question runs the hops the model was trained with (max_hops, top_k_per_hop and
hop_strategy from its checkpoint meta): every hop's query and its documents are printed first, numbered
across hops as the model sees them, so a citation [n] points at one document whichever hop found it.
"""
from __future__ import annotations

import sys

from nanochat.cli import ArgumentParser
from nanochat.retrieval.hop_strategies import offline_choices
from nanochat.retrieval.registry import RETRIEVERS


def print_answer(answer, mode: str, stdout) -> None:
    """Hops (REFRAG), the answer, and its sources, numbered as in the prompt."""
    if mode == "refrag":
        for hop in answer.hops:
            print(f"Hop {hop['hop']}: {hop['query']}", file=stdout)
            for n in hop["documents"]:
                print(f"  [{n}] {answer.documents[n - 1]['title']}", file=stdout)
    print(f"Assistant: {answer.text}", file=stdout)
    sources = answer.cited_documents() or answer.documents
    listed = ", ".join(f"[{d['n']}] {d['title']}" for d in sources) or "none retrieved"
    print(f"\n[Sources: {listed}]", file=stdout, flush=True)


def main(argv=None, stdin=None, stdout=None):
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = ArgumentParser(description="Interactive RAG chat over a knowledge base")
    parser.add_argument("--knowledge_base", required=True, help="KB directory (same KB as training)")
    parser.add_argument("--retriever_type", default=None, choices=list(RETRIEVERS),
                        help="index to search (default: the fine-tune's when the KB has it, else simple)")
    parser.add_argument("--top_k", type=int, default=None,
                        help="documents per question, per hop with refrag (default: the fine-tune's, else 5)")
    parser.add_argument("--source", default="rag",
                        help="checkpoint family: rag | refrag | base | mid | sft, or a checkpoint directory")
    parser.add_argument("--model_tag", default=None, help="checkpoint tag (default: largest model)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    parser.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR)")
    parser.add_argument("--hop_strategy", default=None, choices=offline_choices(),
                        help="refrag: next-hop query strategy (default: the one the model was trained with)")
    parser.add_argument("--max_tokens", type=int, default=200, help="answer length cap in tokens")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--abstain_threshold", default=None,
                        help="abstain when the answer's mean token probability is below this: a number or the "
                             "calibration.json written by scripts.rag_eval --abstain_threshold auto")
    args = parser.parse_args(argv)

    from nanochat.train.loop import set_threads
    set_threads(-1, args.device if args.device != "auto" else "cpu")
    pipeline, _ = load_pipeline(args)
    print("RAG Chat (type 'quit' to exit)", file=stdout)
    print(f"{pipeline.describe()}; {pipeline.manager.retriever_type} retrieval", file=stdout, flush=True)
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
        print_answer(pipeline.answer(query, args.max_tokens), pipeline.mode, stdout)
    return 0


def load_pipeline(args):
    """Model, knowledge base and retrieval settings from the flags and the checkpoint's meta -> (ChatPipeline, meta)."""
    from nanochat.checkpoint_manager import load_model
    from nanochat.engine import Engine
    from nanochat.rag.chat import ChatPipeline
    from nanochat.retrieval import KnowledgeBase, RetrievalManager
    model, tokenizer, meta = load_model(args.source, device=args.device, phase="eval", model_tag=args.model_tag,
                                        step=args.step, base_dir=args.base_dir)
    retriever_type = args.retriever_type
    if retriever_type is None:
        trained = meta.get("args", {}).get("retriever_type")
        retriever_type = trained if trained in KnowledgeBase.load(args.knowledge_base, verify=False).retriever_types else "simple"
    manager = RetrievalManager(retriever_type=retriever_type, knowledge_base_path=args.knowledge_base)
    from nanochat.rag.confidence import resolve_threshold
    return ChatPipeline.from_checkpoint(Engine(model, tokenizer), manager, meta, args.source, args.max_tokens,
                                        top_k=args.top_k, hop_strategy=args.hop_strategy,
                                        abstain_threshold=resolve_threshold(getattr(args, "abstain_threshold", None))), meta


if __name__ == "__main__":
    raise SystemExit(main())
