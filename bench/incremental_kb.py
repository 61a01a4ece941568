"""Incremental KB update: edit 1% of the documents, re-embed through the embedding cache, compare with the full build.

    python -m bench.incremental_kb --passages 20000 embed --shard 1-of-8     # the full build, one shard at a time
    python -m bench.incremental_kb --passages 20000 embed --shard 8-of-8     #   (resumable: each shard is its own job)
    python -m bench.incremental_kb --passages 20000 update --fraction 0.01   # the edit, the re-embed, the figures

The KB is the first --passages passages of bench/scale_data.py (SciFact abstracts, then perturbed excerpts; one
chunk per document). `embed` runs `python -m nanochat.retrieval.embeddings --cache` on one shard with a cold cache
(as the workflow's embed_shard jobs do) and records its wall time: the full build's time is the sum over shards, the
time one machine spends. `update` rewrites one sentence of `--fraction` of the documents, then runs one embed job
over the whole edited KB through the same cache and reports its time against the full build's (target <= 3%).

Equality with a full rebuild: every vector of the edited KB is compared bit for bit with a fresh encode of its
text, for all edited rows and a random sample of unchanged ones (`--check_rows`; `--full_check` re-encodes
every row, as long as the full build). Encoding is batch-invariant, so a row's bytes do not depend on the
rows around it. The reuse section times nanochat.retrieval.evaluate (SciFact, dense) and precompute's query
encoding against the same cache: what retrieval_eval and precompute skip after the KB changed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path("/tmp/nanochat_bench/incremental")


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def prepare(work: Path, n: int):
    """chunks.parquet of the first n passages (cached on disk)."""
    import pandas as pd
    path = work / f"chunks_{n}.parquet"
    if not path.is_file():
        from bench.scale_data import passages
        work.mkdir(parents=True, exist_ok=True)
        passages(n).to_parquet(path, index=False)
    return path, pd.read_parquet(path)


def embed_shard(args) -> dict:
    from nanochat.retrieval.shards import parse_shard, shard_slice
    work = Path(args.work)
    _, chunks = prepare(work, args.passages)
    i, n = parse_shard(args.shard)
    part = chunks.iloc[shard_slice(len(chunks), i, n)]
    shard_dir = work / f"full_{args.passages}" / args.shard
    shard_dir.mkdir(parents=True, exist_ok=True)
    part.to_parquet(shard_dir / "chunks.parquet", index=False)
    log = work / f"full_{args.passages}.json"
    done = json.loads(log.read_text()) if log.is_file() else {}
    if args.shard in done:
        print(f"shard {args.shard} already embedded in {done[args.shard]['seconds']:.1f}s")
        return done[args.shard]
    secs = run([sys.executable, "-m", "nanochat.retrieval.embeddings", "--chunks", str(shard_dir / "chunks.parquet"),
                "--output", str(shard_dir / "embeddings.npy"), "--cache", str(work / "cache"), "--precision", "fp32"])
    done[args.shard] = {"rows": len(part), "seconds": round(secs, 1), "passages_per_s": round(len(part) / secs, 2)}
    log.write_text(json.dumps(done, indent=1))
    print(f"shard {args.shard}: {len(part)} passages in {secs:.1f}s ({len(part) / secs:.2f}/s)")
    return done[args.shard]


def edit(chunks, fraction: float, seed: int = 0):
    """Rewrite one sentence of `fraction` of the documents (a new sentence in place of the first)."""
    from nanochat.data.chunking import split_sentences
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(chunks), size=max(1, int(round(fraction * len(chunks)))), replace=False))
    out = chunks.copy()
    for r in rows:
        sents = split_sentences(out.at[r, "content"]) or [out.at[r, "content"]]
        sents[0] = f"Revision {seed}-{r}: the authors corrected the first statement of this abstract."
        out.at[r, "content"] = " ".join(sents)
    return out, rows


def update(args) -> dict:
    from nanochat.retrieval.embeddings import encode_texts
    from nanochat.retrieval.kb import passage_texts
    from nanochat.retrieval.shards import parse_shard
    work = Path(args.work)
    _, chunks = prepare(work, args.passages)
    log = json.loads((work / f"full_{args.passages}.json").read_text())
    n_shards = parse_shard(next(iter(log)))[1]
    missing = [f"{i}-of-{n_shards}" for i in range(1, n_shards + 1) if f"{i}-of-{n_shards}" not in log]
    if missing:
        raise SystemExit(f"full build incomplete: run `embed --shard S` for {missing}")
    full_secs = sum(v["seconds"] for v in log.values())
    full = np.concatenate([np.load(work / f"full_{args.passages}" / f"{i}-of-{n_shards}" / "embeddings.npy")
                           for i in range(1, n_shards + 1)])
    edited, rows = edit(chunks, args.fraction)
    upd = work / f"update_{args.passages}"
    upd.mkdir(parents=True, exist_ok=True)
    edited.to_parquet(upd / "chunks.parquet", index=False)
    (upd / "embeddings.npy").unlink(missing_ok=True)
    secs = run([sys.executable, "-m", "nanochat.retrieval.embeddings", "--chunks", str(upd / "chunks.parquet"),
                "--output", str(upd / "embeddings.npy"), "--cache", str(work / "cache"), "--precision", "fp32"])
    inc = np.load(upd / "embeddings.npy")
    unchanged = np.setdiff1d(np.arange(len(chunks)), rows)
    texts = passage_texts(edited)
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(unchanged, size=min(args.check_rows, len(unchanged)), replace=False))
    check = unchanged if args.full_check else sample
    t0 = time.perf_counter()
    fresh_edit = encode_texts([texts[r] for r in rows], precision="fp32", show_progress=False)
    fresh_kept = encode_texts([texts[r] for r in check], precision="fp32", show_progress=False)
    check_secs = time.perf_counter() - t0
    out = {"passages": len(chunks), "edited": len(rows), "full_build_seconds": round(full_secs, 1),
           "full_build_shards": n_shards, "update_seconds": round(secs, 1), "ratio": round(secs / full_secs, 4),
           "edited_rows_equal_fresh": bool(np.array_equal(inc[rows], fresh_edit)),
           "unchanged_rows_equal_full_build": bool(np.array_equal(inc[unchanged], full[unchanged])),
           "checked_unchanged_rows": len(check), "checked_rows_equal_fresh": bool(np.array_equal(inc[check], fresh_kept)),
           "edited_rows_changed": bool(not np.array_equal(inc[rows], full[rows])), "check_seconds": round(check_secs, 1)}
    print(f"\nIncremental update of a {len(chunks):,}-passage KB ({len(rows)} documents edited, "
          f"{args.fraction:.1%}), embeddings through the cache, precision fp32, 2 shared CPU cores")
    print(f"{'':<44}{'ours':>12}{'reference':>14}")
    print(f"{'full build: embed (sum of ' + str(n_shards) + ' shard jobs)':<44}{full_secs:>11.1f}s{'':>14}")
    print(f"{'update: one embed job over the edited KB':<44}{secs:>11.1f}s{'':>14}")
    print(f"{'update / full build':<44}{secs / full_secs:>12.2%}{'<= 3.00%':>14}")
    print(f"{'edited rows equal a fresh encode':<44}{str(out['edited_rows_equal_fresh']):>12}{'True':>14}")
    print(f"{'unchanged rows equal the full build':<44}{str(out['unchanged_rows_equal_full_build']):>12}{'True':>14}")
    print(f"{f'{len(check):,} unchanged rows equal a fresh encode':<44}{str(out['checked_rows_equal_fresh']):>12}{'True':>14}")
    if args.reuse:
        out["reuse"] = reuse(work, sum(v["rows"] for v in log.values()) / full_secs)
    (work / f"update_{args.passages}.json").write_text(json.dumps(out, indent=1))
    return out


def reuse(work: Path, rate: float) -> dict:
    """retrieval_eval (SciFact dense) and precompute's query vectors with the warm cache vs without."""
    from bench.scale_data import DATA, N_BASE
    res = {}
    common = [sys.executable, "-m", "nanochat.retrieval.evaluate", "--corpus", str(DATA / "corpus.jsonl"), "--queries",
              str(DATA / "queries.jsonl"), "--qrels", str(DATA / "qrels" / "train.tsv"), "--type", "dense",
              "--scorer", "numpy", "--precision", "fp32"]
    for name in ("warm", "again"):  # warm: the corpus is cached by the full build, queries are not yet; again: all are
        kb_dir = work / f"eval_kb_{name}"
        subprocess.run(["rm", "-rf", str(kb_dir)], check=True)
        res[f"retrieval_eval_{name}_seconds"] = round(run([*common, "--kb_dir", str(kb_dir), "--embedding_cache",
                                                           str(work / "cache"), "--output", str(work / f"eval_{name}.json")]), 1)
    res["retrieval_eval_cold_estimate_seconds"] = round(N_BASE / rate, 1)
    m1, m2 = (json.loads((work / f"eval_{n}.json").read_text()) for n in ("warm", "again"))
    res["ndcg@10"] = m1["ndcg@10"]
    res["same_metrics"] = m1["ndcg@10"] == m2["ndcg@10"] and m1["kb_id"] == m2["kb_id"]
    print(f"{'retrieval_eval SciFact dense, corpus cached':<44}{res['retrieval_eval_warm_seconds']:>11.1f}s"
          f"{res['retrieval_eval_cold_estimate_seconds']:>13.1f}s (cold: 5,183 abstracts at the build's rate)")
    print(f"{'retrieval_eval again, queries cached too':<44}{res['retrieval_eval_again_seconds']:>11.1f}s")
    return res


def main(argv=None):
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=20_000)
    p.add_argument("--work", default=str(WORK))
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--shard", required=True, help="I-of-N")
    u = sub.add_parser("update")
    u.add_argument("--fraction", type=float, default=0.01)
    u.add_argument("--check_rows", type=int, default=2000)
    u.add_argument("--full_check", action="store_true")
    u.add_argument("--reuse", action="store_true", help="also time retrieval_eval with the warm cache")
    args = p.parse_args(argv)
    return embed_shard(args) if args.command == "embed" else update(args)


if __name__ == "__main__":
    main()
