"""Peak memory of building a large dense KB (default 100K passages synthesised from SciFact).

    python -m bench.kb_memory --passages 100000 --fake_embeddings [--index auto] [--path both]

Embeddings are written block by block into a preallocated np.lib.format.open_memmap and FAISS
is filled from it block by block, so the build holds one copy of the matrix (inside the index)
plus one block. `--fake_embeddings` uses random unit vectors (measures the index build; real
encoding of 100K passages takes hours on 2 CPU cores). Each path runs in its own process so each
peak RSS is its own:
  direct: memmap -> DenseRetriever.build            (this module's path)
  kb:     memmap .npy -> build_knowledge_base_from_chunks(embeddings_path=...)  (the KB builder's path)
Measured (2 shared cores, 100K x 384 = 146.5 MiB, auto -> IVF): kb path peak - base 171 MiB (1.17x the
matrix: the KB copies the .npy kernel-side, checks norms and fills FAISS block by block from a memmap);
direct 265 MiB (1.81x; IVF inverted lists grow by doubling). The base RSS is noisy (allocator reuse).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/scifact")
DIM = 384
BLOCK = 16_384


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    """Peak RSS since the last reset_peak() (VmHWM; falls back to ru_maxrss)."""
    try:
        return _status_mb("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> float:
    """Reset the peak to the current RSS (Linux >= 4.0: write 5 to clear_refs); returns current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def synth_chunks(n: int):
    """n unique passages: SciFact abstracts, copies perturbed (one word dropped, a variant tag added)."""
    import pandas as pd
    from nanochat.data.sources.beir import load_corpus
    base = load_corpus(DATA / "corpus.jsonl")
    ids, titles, contents = [], [], []
    for i in range(n):
        d = base[i % len(base)]
        copy = i // len(base)
        text = d["content"]
        if copy:
            words = text.split()
            del words[copy % len(words)]
            text = " ".join(words) + f" (variant {copy})"
        ids.append(f"{d['id']}-{copy}")
        titles.append(d["title"])
        contents.append(text)
    return pd.DataFrame({"id": [f"{i}#0" for i in ids], "doc_id": ids, "chunk_index": 0, "title": titles,
                         "content": contents, "source": None, "metadata": "{}"})


def write_embeddings(path: Path, chunks, fake: bool, seed: int = 0) -> None:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(chunks), DIM))
    if fake:
        rng = np.random.default_rng(seed)
        for s in range(0, len(chunks), BLOCK):
            x = rng.standard_normal((min(BLOCK, len(chunks) - s), DIM), dtype=np.float32)
            mm[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    else:
        from nanochat.retrieval.embeddings import encode_texts
        from nanochat.retrieval.kb import passage_texts
        encode_texts(passage_texts(chunks), out=mm)
    mm.flush()
    del mm


def child(args) -> dict:
    """One measured build in this process; prints one JSON line."""
    from nanochat.retrieval.dense import DenseRetriever
    work = Path(args.work_dir)
    r0 = rss_mb()
    import pandas as pd
    import faiss  # noqa: F401  (library code counts as baseline, not as build memory)
    import nanochat.retrieval.kb  # noqa: F401
    chunks = pd.read_parquet(work / "chunks.parquet")
    r_chunks = reset_peak()  # transient Parquet buffers are not build memory
    t0 = time.perf_counter()
    if args.path == "direct":
        emb = np.load(work / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        used = DenseRetriever.build(work / "kb_direct", chunks, {"index": args.index}, emb)
        r_build = rss_mb()
        import types
        r = DenseRetriever.load(types.SimpleNamespace(path=work / "kb_direct", manifest={}))
        idx, _ = r.search_vectors(np.ascontiguousarray(emb[:20]), 1)
        hit = float((idx[:, 0] == np.arange(20)).mean())
        kind = used["index_kind"]
    else:
        from nanochat.retrieval.kb import build_knowledge_base_from_chunks
        kb = build_knowledge_base_from_chunks(work / "chunks.parquet", work / "kb_builder", ["dense"],
                                              embeddings_path=work / "embeddings.npy",
                                              embedder_info={"model": "fake" if args.fake_embeddings else "all-MiniLM-L6-v2"},
                                              retriever_settings={"dense": {"index": args.index}}, show_progress=False)
        kind = kb.manifest["retrievers"]["dense"]["settings"]["index_kind"]
        hit = None
        r_build = rss_mb()
    out = {"path": args.path, "index_kind": kind, "seconds": round(time.perf_counter() - t0, 1),
           "rss_after_imports_mb": round(r0, 1), "rss_after_chunks_mb": round(r_chunks, 1), "peak_rss_mb": round(r_build, 1),
           "peak_rss_with_reload_mb": round(rss_mb(), 1),
           "self_hit@1": hit}
    print(json.dumps(out))
    return out


def main(argv=None):
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--fake_embeddings", action="store_true", help="random unit vectors instead of encoding")
    p.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "hnsw"])
    p.add_argument("--path", default="both", choices=["both", "direct", "kb"])
    p.add_argument("--work_dir", default="/tmp/nanochat_bench/kb_memory")
    p.add_argument("--child", action="store_true", help=argparse_suppress())
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chunks = synth_chunks(args.passages)
    chunks.to_parquet(work / "chunks.parquet", index=False)
    write_embeddings(work / "embeddings.npy", chunks, args.fake_embeddings)
    print(f"{args.passages} passages ({'fake' if args.fake_embeddings else 'real'} embeddings) prepared in "
          f"{time.perf_counter() - t0:.1f}s; embedding matrix {args.passages * DIM * 4 / 2**20:.1f} MiB")
    rows = []
    for path in (["direct", "kb"] if args.path == "both" else [args.path]):
        cmd = [sys.executable, "-m", "bench.kb_memory", "--child", "--path", path, "--index", args.index,
               "--work_dir", str(work)] + (["--fake_embeddings"] if args.fake_embeddings else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    mat = args.passages * DIM * 4 / 2**20
    print(f"{'path':<8}{'index':>7}{'seconds':>9}{'rss base':>10}{'peak rss':>10}{'peak-base':>11}{'(x matrix)':>11}")
    for r in rows:
        extra = r["peak_rss_mb"] - r["rss_after_chunks_mb"]
        print(f"{r['path']:<8}{r['index_kind']:>7}{r['seconds']:>9}{r['rss_after_chunks_mb']:>10}{r['peak_rss_mb']:>10}"
              f"{extra:>11.1f}{extra / mat:>10.2f}x")
    return rows


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
