"""Prepare data for RAG fine-tuning: the guide's example set, a KB from your documents, or a synthetic world.

    python -m scripts.prepare_rag_dataset --mode example --output data/rag_examples
    python -m scripts.prepare_rag_dataset --mode build --documents data/my_documents.jsonl --output data/my_kb --retriever_type dense
    python -m scripts.prepare_rag_dataset --mode synthetic --output data/synthetic [generator flags...]

`example` writes documents.jsonl (10 customer-support documents), queries_train.jsonl and
queries_val.jsonl (rows {id, question, answers, doc_ids}) and a KB in <output>/knowledge_base/
with the simple and bm25 indexes (plus whatever --retriever_type names).
"""
from __future__ import annotations

import sys
from pathlib import Path

from nanochat.cli import ArgumentParser, output_dir
from nanochat.data.documents import VALIDATION_MODES, write_jsonl

# -----------------------------------------------------------------------------
# The example set: a small online shop's help centre. Each query's answer is a span of its document.

EXAMPLE_DOCUMENTS = [
    ("policy_001", "Return Policy", "Customers can return items within 30 days of purchase with the original receipt. "
     "Items must be unused and in their original packaging. Refunds are processed within 5-7 business days "
     "after the returned item reaches our warehouse."),
    ("policy_002", "Shipping Information", "We offer free shipping on orders over $50. Standard shipping takes 3-5 "
     "business days. Express shipping arrives in 1-2 business days and is available for an additional $12."),
    ("faq_001", "Account Creation", "To create an account, click the Sign Up button and provide your email address. "
     "You will receive a confirmation email to verify your account. The verification link expires after 24 hours."),
    ("faq_002", "Password Reset", "If you forget your password, click Forgot Password on the login page. We send a "
     "reset link to your registered email address. For security, the reset link is valid for 60 minutes."),
    ("policy_003", "International Orders", "We ship to 40 countries. International delivery takes 7-14 business days. "
     "Customs duties and import taxes are paid by the customer on delivery."),
    ("faq_003", "Order Tracking", "Once your order ships, we email you a tracking number. You can follow the parcel "
     "on the Orders page of your account. Tracking updates can take up to 24 hours to appear."),
    ("policy_004", "Warranty", "All electronics come with a 2-year limited warranty covering manufacturing defects. "
     "The warranty does not cover accidental damage or water damage. To claim, contact support with your order number."),
    ("faq_004", "Payment Methods", "We accept Visa, Mastercard, American Express, PayPal and gift cards. Payment is "
     "charged when the order ships. We do not accept cash on delivery."),
    ("faq_005", "Order Cancellation", "You can cancel an order free of charge within 2 hours of placing it from the "
     "Orders page. After 2 hours the order may already be packed; contact support and we will try to stop it."),
    ("policy_005", "Price Match Guarantee", "If you find the same item cheaper at a major retailer within 14 days of "
     "purchase, we refund the difference. Send a link to the lower price to support to request a price match."),
]

EXAMPLE_QUERIES = {
    "train": [
        ("q001", "How many days do I have to return an item?", "30 days", "policy_001"),
        ("q002", "How long do refunds take to process?", "5-7 business days", "policy_001"),
        ("q003", "What is the minimum order for free shipping?", "$50", "policy_002"),
        ("q004", "How long does standard shipping take?", "3-5 business days", "policy_002"),
        ("q005", "How do I verify my new account?", "confirmation email", "faq_001"),
        ("q006", "How long is a password reset link valid?", "60 minutes", "faq_002"),
        ("q007", "Who pays customs duties on international orders?", "the customer", "policy_003"),
        ("q008", "Where can I follow my parcel?", "Orders page", "faq_003"),
        ("q009", "How long is the warranty on electronics?", "2-year", "policy_004"),
        ("q010", "Do you accept PayPal?", "PayPal", "faq_004"),
        ("q011", "How long after ordering can I cancel for free?", "2 hours", "faq_005"),
        ("q012", "Within how many days can I request a price match?", "14 days", "policy_005"),
    ],
    "val": [
        ("q101", "How much does express shipping cost?", "$12", "policy_002"),
        ("q102", "How many countries do you ship to?", "40 countries", "policy_003"),
        ("q103", "Does the warranty cover water damage?", "does not cover", "policy_004"),
        ("q104", "When is my card charged?", "when the order ships", "faq_004"),
        ("q105", "When does the account verification link expire?", "24 hours", "faq_001"),
    ],
}


def write_example(output: Path, retriever_types: list[str]) -> None:
    from nanochat.retrieval import build_knowledge_base
    docs = [{"id": i, "title": t, "content": c, "source": "example help centre"} for i, t, c in EXAMPLE_DOCUMENTS]
    write_jsonl(output / "documents.jsonl", docs)
    for split, rows in EXAMPLE_QUERIES.items():
        write_jsonl(output / f"queries_{split}.jsonl",
                    [{"id": q, "question": text, "answers": [ans], "doc_ids": [doc]} for q, text, ans, doc in rows])
    kb = build_knowledge_base(output / "documents.jsonl", output / "knowledge_base", retriever_types)
    print(f"wrote {output}/documents.jsonl ({len(docs)} docs), queries_train.jsonl ({len(EXAMPLE_QUERIES['train'])}), "
          f"queries_val.jsonl ({len(EXAMPLE_QUERIES['val'])}), knowledge_base/ (indexes: {', '.join(kb.retriever_types)})")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(description="Prepare RAG data: example set, KB build, or synthetic world.")
    parser.add_argument("--mode", choices=["example", "build", "synthetic"], required=True, help="what to prepare")
    parser.add_argument("--output", type=output_dir, required=True, help="output directory (the KB directory in build mode)")
    parser.add_argument("--documents", default=None, help="build mode: documents JSONL or folder of .md/.txt")
    parser.add_argument("--retriever_type", default=None, help="index type(s), comma-separated: simple|bm25|dense|hybrid "
                        "(example default: simple,bm25; build default: simple)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="embedding model for dense/hybrid")
    parser.add_argument("--chunk_tokens", type=int, default=256, help="max tokens per chunk")
    parser.add_argument("--chunk_overlap", type=int, default=32, help="tokens shared by consecutive chunks")
    parser.add_argument("--validation", choices=VALIDATION_MODES, default="strict", help="document validation mode")
    args, rest = parser.parse_known_args(argv)
    if args.mode == "synthetic":
        from nanochat.data import synthetic  # written alongside; imported only when asked for
        return synthetic.main(["--output", args.output] + rest) or 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    types = [t.strip() for t in (args.retriever_type or "").split(",") if t.strip()]
    if args.mode == "example":
        write_example(Path(args.output), ["simple", "bm25"] + [t for t in types if t not in ("simple", "bm25")])
        return 0
    if not args.documents:
        parser.error("--mode build needs --documents")
    from nanochat.retrieval import build_knowledge_base
    rejected = str(Path(args.output) / "rejected.jsonl") if args.validation == "lenient" else None
    kb = build_knowledge_base(args.documents, args.output, types or ["simple"], model=args.model,
                              chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
                              validation=args.validation, rejected_path=rejected)
    print(f"Knowledge base ready: {kb.path} (indexes: {', '.join(kb.retriever_types)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
