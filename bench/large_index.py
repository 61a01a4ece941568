"""Large-KB dense index: compressed (IVF-PQ, memory-mapped, exact re-scoring) against exact Flat search.

    python -m bench.large_index --passages 1000000 --real 20000        # the 1M synthetic KB, then the real subset

Data (bench/scale_data.py): a KB synthesised by perturbing SciFact. Its first `--real` passages have real MiniLM
vectors (fp32, read from the embedding cache that bench/incremental_kb.py filled: encoding them here takes
~40 min); the 1M KB's vectors are stand-ins built from the real vectors of each passage's parts
(normalise(e_a + beta e_b + sigma noise), beta and sigma fitted on the real subset). Queries: SciFact's 809
train queries, real MiniLM vectors.

Each measurement runs in its own process, so its peak RSS (VmHWM, minus the process's RSS after imports) is its own:
  kb       build_knowledge_base_from_chunks(chunks, fake embeddings, dense) with the defaults: auto -> IVF-PQ
  flat     IndexFlatIP over the same vectors: exact top-10 (the reference) and its search speed
  search   the KB's dense index opened memory-mapped, all queries searched (refine on) and again per setting
Figures: build time, peak RSS, index size on disk, q/s on 2 threads, recall@10 = |top-10 ∩ exact top-10| / 10.
Targets: recall@10 >= 0.95, memory >= 8x below Flat, >= 200 q/s; the real subset meets the same recall target.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path("/tmp/nanochat_bench/large_index")
CACHE = Path("/tmp/nanochat_bench/incremental/cache")
THREADS = 2


def rss_mb(field="VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mb()


def real_vectors(texts: list[str], cache) -> np.ndarray:
    from nanochat.retrieval.embed_cache import cached_encode
    vecs, stats = cached_encode(texts, "all-MiniLM-L6-v2", cache, precision="fp32", show_progress=True)
    print(f"  real vectors: {stats['rows']} rows, {stats['hits']} from the cache, {stats['computed']} encoded")
    return vecs


def prepare(args) -> dict:
    """Chunks, real vectors (subset + queries), fitted stand-ins for every passage, exact ground truth inputs."""
    from bench.scale_data import N_BASE, fake_vectors, fit_fake, load_base, passages, queries, recipes
    from nanochat.retrieval.kb import passage_texts
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta_path = work / f"prepared_{args.passages}_{args.real}.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    base = load_base()
    t0 = time.perf_counter()
    chunks = passages(args.passages, base=base)
    chunks.to_parquet(work / f"chunks_{args.passages}.parquet", index=False)
    print(f"  {len(chunks):,} passages synthesised in {time.perf_counter() - t0:.0f}s")
    real = real_vectors(passage_texts(chunks.iloc[:args.real]), args.cache)
    np.save(work / f"real_{args.real}.npy", real)
    qids, qtexts, _ = queries()
    np.save(work / "queries.npy", real_vectors(qtexts, args.cache))
    rec = recipes(args.passages, np.array([len(s) for s in base[3]]))
    base_vecs = real[:N_BASE]
    fit = fit_fake(real, base_vecs, {k: v[:args.real] for k, v in rec.items()})
    print(f"  stand-in vectors: beta {fit['beta']:.2f}, sigma {fit['sigma']:.4f}; mean cos to base abstract "
          f"real {fit['real_cos_a']:.3f} fake {fit['fake_cos_a']:.3f}, to the spliced one real {fit['real_cos_b']:.3f} "
          f"fake {fit['fake_cos_b']:.3f}")
    mm = np.lib.format.open_memmap(work / f"fake_{args.passages}.npy", mode="w+", dtype=np.float32,
                                   shape=(args.passages, real.shape[1]))
    fake_vectors(base_vecs, rec, fit["beta"], fit["sigma"], out=mm)
    mm.flush()
    del mm
    np.save(work / f"fake_{args.real}.npy", np.load(work / f"fake_{args.passages}.npy", mmap_mode="r")[:args.real])
    meta = {"fit": fit, "queries": len(qids)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


# -----------------------------------------------------------------------------
# children: one measurement each

def child_flat(args) -> dict:
    import faiss
    faiss.omp_set_num_threads(THREADS)
    emb = np.load(args.vectors, mmap_mode="r")
    q = np.load(Path(args.work) / "queries.npy")
    base = reset_peak()
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(emb.shape[1])
    import mmap
    for s in range(0, emb.shape[0], 65_536):
        index.add(np.ascontiguousarray(emb[s:s + 65_536]))
        emb._mmap.madvise(mmap.MADV_DONTNEED)  # the index holds the copy; the file's pages leave our RSS
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, top = index.search(q, 10)
    secs = time.perf_counter() - t0
    np.save(args.truth, top)
    return {"what": "flat", "build_s": build, "qps": len(q) / secs, "peak_mb": rss_mb("VmHWM") - base,
            "bytes": int(emb.shape[0]) * emb.shape[1] * 4}


def child_kb(args) -> dict:
    """The KB builder with the library's defaults (auto index kind), fake embeddings for the dense part."""
    from nanochat.retrieval.kb import build_knowledge_base_from_chunks
    import faiss
    faiss.omp_set_num_threads(THREADS)
    base = reset_peak()
    t0 = time.perf_counter()
    kb = build_knowledge_base_from_chunks(args.chunks, args.kb, ["dense"], embeddings_path=args.vectors,
                                          embedder_info={"model": "all-MiniLM-L6-v2", "precision": "fp32"},
                                          retriever_settings={"dense": json.loads(args.settings)}, show_progress=False)
    secs = time.perf_counter() - t0
    s = kb.manifest["retrievers"]["dense"]["settings"]
    return {"what": "kb", "build_s": secs, "peak_mb": rss_mb("VmHWM") - base, "index_kind": s["index_kind"],
            "index_params": s.get("index_params"), "bytes": (Path(args.kb) / "dense" / "index.faiss").stat().st_size}


def child_search(args) -> dict:
    import faiss
    import types
    from nanochat.retrieval.dense import DenseRetriever
    faiss.omp_set_num_threads(THREADS)
    q = np.load(Path(args.work) / "queries.npy")
    truth = np.load(args.truth)
    kb = types.SimpleNamespace(path=Path(args.kb), manifest={"embedding": {"model": "all-MiniLM-L6-v2", "precision": "fp32"}})
    base = reset_peak()
    r = DenseRetriever.load(kb, **json.loads(args.settings))
    opened = rss_mb() - base
    r.search_vectors(q[:32], 10)  # first touch: faiss's thread pool, page faults of the coarse quantizer
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        top, _ = r.search_vectors(q, 10)
        secs = time.perf_counter() - t0
        best = secs if best is None else min(best, secs)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, truth)]))
    return {"what": "search", "settings": json.loads(args.settings), "qps": len(q) / best, "recall@10": recall,
            "open_mb": opened, "peak_mb": rss_mb("VmHWM") - base}


def child(args) -> dict:
    return {"flat": child_flat, "kb": child_kb, "search": child_search}[args.child](args)


def spawn(args, kind: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.large_index", "--child", kind, "--work", args.work]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{kind} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(title: str, flat: dict, kb: dict, searches: list[dict]):
    print(f"\n{title}")
    print(f"{'':<40}{'compressed (ours)':>20}{'Flat (exact)':>15}{'target':>12}")
    print(f"{'index kind':<40}{kb['index_kind']:>20}{'flat':>15}")
    if kb.get("index_params"):
        p = kb["index_params"]
        desc = f"nlist {p['nlist']}, {p.get('pq_m', p['code_size'])} B/vec"
        print(f"{'parameters (manifest)':<40}{desc:>20}{'':>15}")
    print(f"{'build time (s)':<40}{kb['build_s']:>20.1f}{flat['build_s']:>15.1f}")
    print(f"{'peak RSS of the build (MiB)':<40}{kb['peak_mb']:>20.0f}{flat['peak_mb']:>15.0f}")
    print(f"{'index size (MiB)':<40}{kb['bytes'] / 2**20:>20.1f}{flat['bytes'] / 2**20:>15.1f}")
    main = searches[0]
    ratio = flat["peak_mb"] / max(main["peak_mb"], 1e-9)
    print(f"{'search process peak RSS (MiB)':<40}{main['peak_mb']:>20.0f}{flat['peak_mb']:>15.0f}")
    print(f"{'memory: Flat / compressed':<40}{ratio:>19.1f}x{'':>15}{'>= 8x':>12}")
    print(f"{'queries/s (2 threads, 809 queries)':<40}{main['qps']:>20.0f}{flat['qps']:>15.0f}{'>= 200':>12}")
    print(f"{'recall@10 vs exact':<40}{main['recall@10']:>20.3f}{1.0:>15.3f}{'>= 0.95':>12}")
    for s in searches[1:]:
        label = ", ".join(f"{k}={v}" for k, v in s["settings"].items())
        print(f"{'  ' + label:<40}{s['recall@10']:>13.3f} @ {s['qps']:>4.0f} q/s, {s['peak_mb']:.0f} MiB")


def measure(args, label: str, n: int, vectors: Path, chunks: Path, settings: dict, sweep: list[dict]):
    work = Path(args.work)
    kb_dir = work / f"kb_{label}"
    subprocess.run(["rm", "-rf", str(kb_dir)], check=True)
    truth = work / f"truth_{label}.npy"
    flat = spawn(args, "flat", vectors=vectors, truth=truth)
    kb = spawn(args, "kb", vectors=vectors, chunks=chunks, kb=kb_dir, settings=json.dumps(settings))
    searches = [spawn(args, "search", kb=kb_dir, truth=truth, settings=json.dumps(s)) for s in [{}, *sweep]]
    table(f"{label}: {n:,} passages x 384, {vectors.name}", flat, kb, searches)
    return {"flat": flat, "kb": kb, "searches": searches}


def main(argv=None):
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--real", type=int, default=20_000, help="passages with real MiniLM vectors (from --cache)")
    p.add_argument("--cache", default=str(CACHE))
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--only", default="all", choices=["all", "large", "real"])
    p.add_argument("--child", default=None)
    for k in ("vectors", "truth", "chunks", "kb", "settings"):
        p.add_argument(f"--{k}", default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    meta = prepare(args)
    work = Path(args.work)
    out = {"fit": meta["fit"]}
    sweep = [{"nprobe": 16}, {"nprobe": 64}, {"refine": 0}]
    if args.only in ("all", "large"):
        out["large"] = measure(args, "synthetic 1M (stand-in vectors)", args.passages, work / f"fake_{args.passages}.npy",
                               work / f"chunks_{args.passages}.parquet", {}, sweep)
    if args.only in ("all", "real"):
        import pandas as pd
        sub = work / f"chunks_{args.real}.parquet"
        pd.read_parquet(work / f"chunks_{args.passages}.parquet").iloc[:args.real].to_parquet(sub, index=False)
        forced = {"index": "ivf_pq"}  # auto keeps exact search at this size; the same compressed index, forced
        out["real"] = measure(args, f"real MiniLM subset {args.real:,}", args.real, work / f"real_{args.real}.npy", sub,
                              forced, [{"refine": 0}])
        out["fake_subset"] = measure(args, f"stand-in vectors, same {args.real:,}", args.real,
                                     work / f"fake_{args.real}.npy", sub, forced, [{"refine": 0}])
    (work / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
