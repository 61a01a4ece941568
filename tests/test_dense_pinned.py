"""Pinned dense retrieval quality on a SciFact subsample (pyserini style: nDCG@10 to 3 decimals).

    python -m pytest tests/test_dense_pinned.py -q

The subsample: the relevant passages of the first train queries in qrels order (up to N_RELEVANT
passages), then the first other corpus passages up to N_DOCS; queries = train queries whose
relevant passages are all inside. A change in chunk text, embedding model, pooling, truncation or
scoring moves the number; re-pin only for a change you meant, with the reason in the commit.
"""
import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path("/work/shared/data/scifact")
N_RELEVANT, N_DOCS = 60, 120
PINNED_NDCG10 = 0.906  # fp32 (= auto on CPUs without native bf16), measured with this subsample: 120 passages

pytestmark = pytest.mark.skipif(not (DATA / "corpus.jsonl").is_file(), reason="shared SciFact data not present")


def write_subsample(out: Path) -> tuple[int, int]:
    qrels = {}
    for line in (DATA / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(rel)
    keep = []
    for rels in qrels.values():
        new = [d for d in rels if d not in keep]
        if len(keep) + len(new) > N_RELEVANT:
            break
        keep += new
    docs = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]
    keep_set = set(keep)
    keep_set |= set([d["_id"] for d in docs if d["_id"] not in keep_set][:N_DOCS - len(keep_set)])
    sub = [d for d in docs if d["_id"] in keep_set]
    qids = [q for q, rels in qrels.items() if set(rels) <= keep_set]
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in sub))
    (out / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                   "".join(f"{q}\t{d}\t{r}\n" for q in qids for d, r in qrels[q].items()))
    return len(sub), len(qids)


@pytest.mark.slow
def test_dense_ndcg_pinned(tmp_path):
    from nanochat.retrieval.evaluate import main
    n_docs, n_q = write_subsample(tmp_path / "data")
    assert n_docs == N_DOCS and n_q > 30
    res = main(["--corpus", str(tmp_path / "data" / "corpus.jsonl"), "--queries", str(DATA / "queries.jsonl"),
                "--qrels", str(tmp_path / "data" / "qrels.tsv"), "--type", "dense", "--precision", "fp32",
                "--scorer", "numpy", "--top_k", "10", "--output", str(tmp_path / "metrics.json")])
    assert res["num_queries"] == n_q
    print(n_docs, n_q, res["ndcg@10"])
    assert round(res["ndcg@10"], 3) == PINNED_NDCG10


def test_int8_cosine_to_fp32():
    from nanochat.retrieval.embeddings import encode_texts
    docs = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()[:4]]
    texts = ["The cat sat on the mat.", "Refunds are processed within five business days."] + \
        [d["title"] for d in docs]  # sentences (titles of abstracts)
    ref = encode_texts(texts, precision="fp32", show_progress=False)
    q8 = encode_texts(texts, precision="int8", show_progress=False)
    cos = np.sum(ref * q8, axis=1)
    assert cos.mean() >= 0.988 and cos.min() >= 0.985  # measured (AVX2 fbgemm): mean 0.9902, min 0.987 (a title)
