"""Held-out evaluation speed: greedy answers one conversation at a time (today's path) vs batched generation.

    # the default RAG model of a DAG run (snakemake --cores all in this checkout), all 700 test questions:
    flock /tmp/nanochat-heavy.lock python -m bench.eval_speed --results results
    flock /tmp/nanochat-heavy.lock python -m bench.eval_speed                  # random weights, 700 questions
    python -m bench.eval_speed --quick                                         # 64 questions, smoke run

--results DIR: the run's own evaluation inputs -- results/kb/synthetic/<retriever>, the precomputed retrieval of
results/runs/synthetic_rag, every question of results/synthetic/queries_test.jsonl, the checkpoint
rag/synthetic_rag under results/checkpoints -- rendered as scripts.rag_eval renders its "retrieval" condition
(top_k and max_doc_length from the checkpoint), answers up to --max_new_tokens (the DAG's 32), and EM of each path.

Without --results: the bundled synthetic world's test questions (seed 0, 2000 entities: 700 questions), each with
its gold document(s) plus neighbours up to --top_k documents of at most --max_doc_length words. Model: the default
RAG model's shape (4 layers T,T,M,M, 128 wide, 4 heads, copy head, sequence_len 256) with random weights and a BPE
tokenizer trained on the documents. Random weights seldom emit a stop token, so nearly every answer runs the full
--max_new_tokens: the figures are per generated token and the work is the same on both paths.

One run prints, side by side: seconds, generated tokens/s and the speed-up over the one-at-a-time path for each
batch size, against the issue's >= 8x target, whether every answer is identical token for token, and EM.
"""
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nanochat.cli import ArgumentParser
from nanochat.engine import Engine

TARGET_SPEEDUP = 8.0


def synthetic_conversations(n_questions, top_k, max_doc_length, seed=0):
    """(conversations, documents' texts) for the first n test questions of the seeded synthetic world."""
    from nanochat.rag.conversation import build_conversation, truncate_words
    from nanochat.data.synthetic import generate_world
    with tempfile.TemporaryDirectory() as tmp:
        generate_world(tmp, seed=seed, n_entities=2000)
        docs = [json.loads(line) for line in Path(tmp, "documents.jsonl").read_text().splitlines()]
        questions = [json.loads(line) for line in Path(tmp, "queries_test.jsonl").read_text().splitlines()]
    by_id = {d["id"]: i for i, d in enumerate(docs)}
    convs = []
    for q in questions[:n_questions]:
        rows = [by_id[d] for d in q["doc_ids"]]
        k = 1
        while len(rows) < top_k:  # neighbours of the first gold document stand in for retrieved distractors
            rows.append((rows[0] + k) % len(docs))
            k += 1
        shown = [{"title": docs[r]["title"], "content": truncate_words(docs[r]["content"], max_doc_length)}
                 for r in rows[:top_k]]
        convs.append(build_conversation(q["question"], shown))
    return convs, [d["title"] + "\n" + d["content"] for d in docs]


def run_conversations(results, device="cpu", max_questions=-1):
    """(conversations, items, model, tokenizer, label) of a DAG run's RAG evaluation, "retrieval" condition."""
    from nanochat.checkpoint_manager import load_model
    from nanochat.data.queries import load_queries
    from nanochat.rag.conversation import build_conversation
    from nanochat.rag.evaluation import load_items, truncate_docs
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.retrieval.precompute import load_precomputed
    results = Path(results)
    model, tokenizer, meta = load_model("rag", device, phase="eval", model_tag="synthetic_rag",
                                        base_dir=results / "checkpoints")
    args = meta.get("args", {})
    top_k, max_doc_length = args.get("top_k") or 5, args.get("max_doc_length") or 300
    items = load_items(load_queries(results / "synthetic" / "queries_test.jsonl"),
                       load_precomputed(results / "runs" / "synthetic_rag" / "retrieval.parquet"),
                       KnowledgeBase.load(results / "kb" / "synthetic" / args.get("retriever_type", "bm25")), top_k, "test", max_questions)
    convs = [build_conversation(it["question"], truncate_docs(it["retrieved"], max_doc_length)) for it in items]
    return convs, items, model, tokenizer, f"rag/synthetic_rag step {meta.get('step')} (top_k {top_k})"


def exact_match(answers, items):
    from nanochat.rag.metrics import exact_match as em
    return sum(em(text.strip(), it["answers"]) for (text, _), it in zip(answers, items)) / len(items)


def random_model(vocab_size, device):
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.mamba import building_for
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=256, vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128,
                    block_pattern="T,T,M,M", copy_head=True)
    with building_for(device):
        model = GPT(cfg).to(device)
    model.init_weights()
    with torch.no_grad():  # init zeroes output projections and the copy gate: give every path real work
        for name, p in model.named_parameters():
            if not name.endswith(("A_log", "dt_bias")):
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=700, help="test questions (700 = all)")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="generated tokens per answer at most")
    parser.add_argument("--batch_sizes", default="8,16,32,64", help="comma-separated batch sizes to time")
    parser.add_argument("--top_k", type=int, default=2, help="documents per prompt")
    parser.add_argument("--max_doc_length", type=int, default=80, help="words kept per document")
    parser.add_argument("--source", default=None, help="rag|refrag|...: time a trained checkpoint instead")
    parser.add_argument("--model_tag", default=None, help="checkpoint tag with --source")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--results", default=None, help="a DAG run's results/ directory: its RAG model and questions")
    parser.add_bool("--quick", default=False, help="64 questions, batch 8 and 32 (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.batch_sizes = 64, "8,32"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    items = None
    if args.results:  # the run's model and every test question
        convs, items, model, tokenizer, what = run_conversations(args.results, args.device,
                                                                 args.questions if args.quick else -1)
    elif args.source:
        from nanochat.checkpoint_manager import load_model
        convs, _ = synthetic_conversations(args.questions, args.top_k, args.max_doc_length)
        model, tokenizer, _ = load_model(args.source, device=args.device, phase="eval", model_tag=args.model_tag)
        what = f"{args.source} checkpoint {args.model_tag or ''}".strip()
    else:
        from nanochat.tokenizer import Tokenizer
        convs, texts = synthetic_conversations(args.questions, args.top_k, args.max_doc_length)
        tokenizer = Tokenizer.train_from_iterator(texts, vocab_size=2048)
        model = random_model(tokenizer.get_vocab_size(), args.device)
        what = "random weights"
    engine = Engine(model, tokenizer)
    cfg = model.config
    lengths = [len(engine._render(c, args.max_new_tokens)) for c in convs]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; model "
          f"{','.join(cfg.block_pattern)} x {cfg.n_embd} (mamba v{cfg.mamba_version}, copy head {cfg.copy_head}, "
          f"vocab {cfg.vocab_size}), {what}")
    print(f"{len(convs)} prompts: {statistics.mean(lengths):.0f} tokens on average (min {min(lengths)}, max "
          f"{max(lengths)}), up to {args.max_new_tokens} new tokens each, greedy", flush=True)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0

    reference, t_ref = timed(lambda: [engine.generate_from_conversation(c, max_tokens=args.max_new_tokens)
                                      for c in convs])
    n_tokens = sum(len(info["tokens"]) for _, info in reference)
    stopped = sum(info["stopped"] == "stop_token" for _, info in reference)
    print(f"{n_tokens} tokens generated, {stopped} answers ended with a stop token"
          + ("" if items is None else f"; EM {exact_match(reference, items):.4f}"))
    header = f"{'path':28s} {'batch':>5s} {'seconds':>8s} {'tokens/s':>9s} {'speed-up':>8s} {'target':>7s} " \
             f"{'identical':>9s}"
    print(header)
    print(f"{'one at a time (today)':28s} {1:5d} {t_ref:8.2f} {n_tokens / t_ref:9.1f} {1.0:7.2f}x "
          f"{'':>7s} {'-':>9s}", flush=True)
    all_same, best = True, 0.0
    for bs in batch_sizes:
        got, t = timed(lambda: engine.generate_batch_conversations(convs, max_tokens=args.max_new_tokens,
                                                                   batch_size=bs))
        same = sum(g == r for g, r in zip(got, reference))
        all_same &= same == len(convs)
        best = max(best, t_ref / t)
        em = "" if items is None else f" EM {exact_match(got, items):.4f}"
        print(f"{'generate_batch_conversations':28s} {bs:5d} {t:8.2f} {n_tokens / t:9.1f} {t_ref / t:7.2f}x "
              f"{TARGET_SPEEDUP:6.1f}x {same:4d}/{len(convs)}{em}", flush=True)
    verdict = "meets" if best >= TARGET_SPEEDUP else "misses"
    print(f"best speed-up {best:.2f}x {verdict} the >= {TARGET_SPEEDUP:.0f}x target; identical answers: {all_same}")
    if not all_same:
        raise SystemExit("batched answers differ from the one-at-a-time answers")


if __name__ == "__main__":
    main()
