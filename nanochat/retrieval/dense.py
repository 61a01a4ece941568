"""Dense retrieval: FAISS inner product over L2-normalised sentence embeddings (== cosine).

Files under `<kb>/dense/`: `index.faiss` (faiss.write_index, no pickle) and `settings.json`
(model, precision, index kind) so the index carries what it was built with. Small KBs
use exact search (IndexFlatIP); above `ivf_threshold` rows "auto" switches to IVF, and above
`compress_threshold` to a compressed index (IVF-PQ by default, or IVF-SQ8; nanochat/retrieval/ann.py)
searched memory-mapped, its candidates re-scored exactly from embeddings.npy (`refine`).

Builds are byte-reproducible: IVF samples its training rows and seeds k-means with fixed seeds,
and HNSW inserts on one thread by default (FAISS's parallel insertion links nodes in whatever
order threads reach them; `hnsw_build_threads` trades that for speed).
"""
from __future__ import annotations

import contextlib
import json
import math
import mmap
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, atomic_write_json
from nanochat.retrieval import ann
from nanochat.retrieval.base import Retriever

ADD_BLOCK = 16_384  # rows copied into FAISS at a time: a memmapped matrix is never fully materialised twice


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("dense retrieval needs FAISS: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def faiss_gpu_available() -> bool:
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        import torch
        return torch.cuda.is_available() and faiss.get_num_gpus() > 0
    except Exception:
        return False


def _normalised_block(block: np.ndarray) -> np.ndarray:
    """float32 C-contiguous copy of a block, re-normalised if a producer forgot to."""
    block = np.ascontiguousarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        block = block / np.maximum(norms, 1e-12)[:, None]
    return block


@contextlib.contextmanager
def faiss_threads(n: int):
    """Run FAISS (OpenMP) with n threads inside the block; n <= 0 leaves FAISS's default."""
    faiss = _faiss()
    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", *ann.COMPRESSED)


def build_index(embeddings: np.ndarray, kind: str = "flat", nlist: int | None = None, hnsw_m: int = 32,
                ef_construction: int = 200, seed: int = 0, hnsw_build_threads: int = 1, pq_m: int = 48):
    """A FAISS inner-product index over (N, d) normalised vectors, filled block by block.

    Same vectors and arguments -> the same index bytes: IVF's training sample and k-means use `seed`;
    HNSW is filled with `hnsw_build_threads` threads (1: deterministic; 0: every core, faster, but
    the graph then depends on thread timing).
    """
    faiss = _faiss()
    n, d = embeddings.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        # reserve the code buffer once (grow then shrink keeps std::vector capacity): block-wise adds
        # would otherwise reallocate, briefly holding old + new buffers (~2x the matrix at peak)
        index.codes.resize(n * index.code_size)
        index.codes.resize(0)
    elif kind == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234 + seed  # k-means initialisation (FAISS's default seed when seed == 0)
        # 40 points per list (FAISS wants >= 39): the training copy stays <= ~half the matrix at 100K rows,
        # so the build peak is the index's own copy, not index + sample (all rows at 256/list)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 40 * nlist), replace=False))
        train = np.empty((len(sample), d), dtype=np.float32)
        mapped = getattr(embeddings, "_mmap", None)
        for start in range(0, n, ADD_BLOCK):  # gathered block by block: a memmap's pages are dropped as we go
            lo, hi = np.searchsorted(sample, [start, start + ADD_BLOCK])
            train[lo:hi] = _normalised_block(embeddings[sample[lo:hi]])
            if mapped is not None:
                mapped.madvise(mmap.MADV_DONTNEED)
        index.train(train)
        del train
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    elif kind in ann.COMPRESSED:
        index, train_size = ann.make_compressed(kind, d, n, nlist, pq_m, seed)
        train = ann.sample_rows(embeddings, train_size, seed, _normalised_block)
        index.train(train)
        del train
    else:
        raise ValueError(f"dense index kind must be one of {', '.join(INDEX_KINDS[1:])}, got {kind!r}")
    mapped = getattr(embeddings, "_mmap", None)  # np.memmap / np.load(mmap_mode=...)
    with faiss_threads(hnsw_build_threads if kind == "hnsw" else 0):
        for start in range(0, n, ADD_BLOCK):
            index.add(_normalised_block(embeddings[start:start + ADD_BLOCK]))
            if mapped is not None:  # drop the pages we just read from our RSS (they stay in the page cache)
                mapped.madvise(mmap.MADV_DONTNEED)
    return index


def choose_kind(settings: dict, n: int) -> str:
    """The index kind for n chunks: as set, or by size under "auto" (flat < ivf_threshold <= ivf < compress_threshold)."""
    kind = settings["index"]
    if kind not in INDEX_KINDS:
        raise ValueError(f"dense index must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    if n >= int(settings["compress_threshold"]):
        if settings["compressed"] not in ann.COMPRESSED:
            raise ValueError(f"dense compressed must be one of {', '.join(ann.COMPRESSED)}, got {settings['compressed']!r}")
        return settings["compressed"]
    return "ivf" if n >= int(settings["ivf_threshold"]) else "flat"


# Command-line spellings of the dense settings (python -m nanochat.retrieval, nanochat.retrieval.precompute,
# nanochat.retrieval.evaluate): build flags are recorded in the KB, search flags override at load.
BUILD_FLAGS = {"index": (str, "auto | flat | ivf | hnsw | ivf_pq | ivf_sq8 (auto: by KB size)"),
               "nlist": (int, "IVF lists (default ~4 sqrt(N))"),
               "pq_m": (int, "IVF-PQ bytes per vector (divides the dimension)"),
               "compress_threshold": (int, "auto: chunks from which the index is compressed")}
SEARCH_FLAGS = {"nprobe": (int, "IVF lists scanned per query"),
                "ef_search": (int, "HNSW candidate list length at search"),
                "refine": (int, "compressed index: re-score refine x top_k candidates exactly (0 = off)")}


def add_dense_flags(parser, build: bool = True) -> None:
    """--nprobe/--ef_search/--refine (and with build, --index/--nlist/--pq_m/--compress_threshold); None = unset."""
    for name, (kind, help_text) in {**(BUILD_FLAGS if build else {}), **SEARCH_FLAGS}.items():
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"dense: {help_text}")


def dense_flag_settings(args, build: bool = True) -> dict:
    """The dense settings given on the command line (see add_dense_flags)."""
    names = [*(BUILD_FLAGS if build else {}), *SEARCH_FLAGS]
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


class DenseRetriever(Retriever):
    name = "dense"
    DEFAULTS = {
        "model": "all-MiniLM-L6-v2",
        "precision": "auto",        # query encoding precision; at load the KB manifest's embedding precision wins
        "index": "auto",            # auto | flat | ivf | hnsw | ivf_pq | ivf_sq8
        "ivf_threshold": 50_000,    # auto: exact search below this many chunks, IVF above
        "compress_threshold": 500_000,  # auto: a compressed index (`compressed`) from this many chunks on
        "compressed": "ivf_pq",     # the compressed kind auto picks: ivf_pq | ivf_sq8
        "pq_m": 48,                 # IVF-PQ: bytes per vector (a divisor of the dimension; 48 -> 32x smaller than float32)
        "refine": 4,                # compressed: re-score refine x top_k candidates exactly from embeddings.npy (0 = off)
        "mmap": "auto",             # auto (compressed kinds) | true | false: open index.faiss with IO_FLAG_MMAP
        "nlist": None,              # IVF lists (None: ~4 sqrt(N))
        "nprobe": 32,               # IVF lists scanned per query
        "hnsw_m": 32,
        "hnsw_build_threads": 1,    # 1: the same graph on every build; 0: all cores (faster, not reproducible)
        "ef_search": 128,
        "query_batch_size": 256,
        "use_gpu": "auto",          # auto | true | false: GPU FAISS when built with GPU support and CUDA is present
    }

    # what may change at load without a rebuild (RetrievalManager(..., nprobe=64), the CLIs' --nprobe/--ef_search/--refine)
    SEARCH_SETTINGS = ("nprobe", "ef_search", "refine", "mmap", "use_gpu", "query_batch_size", "precision", "model")

    def __init__(self, index, settings: dict, kb_path: Path | None = None):
        self.index = index
        self.settings = settings
        self.kb_path = kb_path

    @classmethod
    def build(cls, kb_dir, chunks, settings: dict, embeddings: np.ndarray | None) -> dict:
        faiss = _faiss()
        s = {**cls.DEFAULTS, **{k: v for k, v in (settings or {}).items() if k in cls.DEFAULTS}}
        if embeddings is None:  # a KB built without the embed stage: encode here
            from nanochat.retrieval.embeddings import encode_texts
            from nanochat.retrieval.kb import passage_texts
            embeddings = encode_texts(passage_texts(chunks), s["model"], precision=s["precision"])
        n, d = embeddings.shape
        if n != len(chunks):
            raise ValueError(f"embeddings have {n} rows but the KB has {len(chunks)} chunks; rebuild the embeddings")
        if n == 0:
            raise ValueError("cannot build a dense index over an empty knowledge base (0 chunks)")
        kind = choose_kind(s, n)
        index = build_index(embeddings, kind, nlist=s["nlist"], hnsw_m=s["hnsw_m"],
                            hnsw_build_threads=int(s["hnsw_build_threads"]), pq_m=int(s["pq_m"]))
        out_dir = Path(kb_dir) / cls.name
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "index.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        used = {**s, "index_kind": kind, "dimension": int(d), "rows": int(n)}
        if kind == "ivf":
            used["nlist"] = int(index.nlist)
        elif kind in ann.COMPRESSED:
            used["index_params"] = ann.describe(index, kind)
            used["nlist"] = used["index_params"]["nlist"]
        atomic_write_json(out_dir / "settings.json", used)
        return used

    @classmethod
    def load(cls, kb, **overrides) -> "DenseRetriever":
        """Overrides (e.g. nprobe=64, use_gpu=False, precision="fp32") apply to searching only."""
        faiss = _faiss()
        out_dir = Path(kb.path) / cls.name
        if not (out_dir / "index.faiss").is_file():
            raise FileNotFoundError(f"dense index not found: {out_dir / 'index.faiss'}; build the KB with --type dense")
        settings = json.loads((out_dir / "settings.json").read_text())
        unknown = set(overrides) - set(cls.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown dense retriever setting(s): {sorted(unknown)}; known: {sorted(cls.DEFAULTS)}")
        settings.update(overrides)
        if settings.get("index_kind") is None:  # settings.json of a KB built before compressed kinds existed
            settings["index_kind"] = "flat"
        # queries must be encoded by the model that embedded the chunks: the KB manifest is the authority
        emb = (getattr(kb, "manifest", None) or {}).get("embedding") or {}
        if emb.get("model") and "model" not in overrides:
            from nanochat.retrieval.embeddings import model_location
            settings["model"] = model_location(emb)  # a fine-tuned model: its directory, checked against its hash
        if "precision" not in overrides:  # ... and at the precision they were encoded with, where this host can run it
            from nanochat.retrieval.embeddings import query_precision
            settings["precision"] = query_precision(emb.get("precision") or settings.get("precision"))
        index = ann.read_index(out_dir / "index.faiss", settings["index_kind"], settings.get("mmap", "auto"))
        if settings["index_kind"] in ("ivf", *ann.COMPRESSED):
            index.nprobe = int(settings["nprobe"])
        elif settings.get("index_kind") == "hnsw":
            index.hnsw.efSearch = int(settings["ef_search"])
        use_gpu = str(settings.get("use_gpu", "auto")).lower()
        if use_gpu in ("true", "1") or (use_gpu == "auto" and settings.get("index_kind") != "hnsw" and faiss_gpu_available()):
            if not faiss_gpu_available():
                raise RuntimeError("use_gpu=true but FAISS has no GPU support or no CUDA GPU is visible; set use_gpu to auto")
            cls._gpu_res = getattr(cls, "_gpu_res", None) or faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(cls._gpu_res, 0, index)
        return cls(index, settings, Path(kb.path))

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Query vectors; through the embedding cache when one is attached (precompute --embedding_cache)."""
        from nanochat.retrieval.embeddings import encode_texts
        cache = getattr(self, "embedding_cache", None)
        if cache:
            from nanochat.retrieval.embed_cache import cached_encode
            return cached_encode(queries, self.settings["model"], cache, batch_size=64, precision=self.settings["precision"],
                                 show_progress=len(queries) > 1000)[0]
        return encode_texts(queries, self.settings["model"], batch_size=64, precision=self.settings["precision"],
                            show_progress=len(queries) > 1000)

    def search_vectors(self, vectors: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search with precomputed query vectors (Q, d); padding -1 / -inf past the index size."""
        q = vectors.shape[0]
        k = min(top_k, self.index.ntotal)
        idx = np.full((q, top_k), -1, dtype=np.int64)
        scores = np.full((q, top_k), -np.inf, dtype=np.float32)
        if q == 0 or k == 0:
            return idx, scores
        bs = int(self.settings.get("query_batch_size", 256))
        factor = int(self.settings.get("refine") or 0) if self.settings.get("index_kind") in ann.COMPRESSED else 0
        for start in range(0, q, bs):
            batch = np.ascontiguousarray(vectors[start:start + bs], dtype=np.float32)
            if factor > 0 and self.exact_vectors() is not None:
                _, cand = self.index.search(batch, min(self.index.ntotal, factor * k))
                i, s = ann.refine(self.exact_vectors(), batch, cand, k)
            else:
                s, i = self.index.search(batch, k)
            s[i < 0] = -np.inf
            idx[start:start + bs, :k] = i
            scores[start:start + bs, :k] = s
        return idx, scores

    def exact_vectors(self) -> np.ndarray | None:
        """The KB's float32 embeddings, memory-mapped (for `refine`); None when the KB has none."""
        if not hasattr(self, "_exact"):
            path = self.kb_path / "embeddings.npy" if self.kb_path is not None else None
            self._exact = np.load(path, mmap_mode="r", allow_pickle=False) if path and path.is_file() else None
        return self._exact

    def search_batch(self, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        queries = list(queries)
        vectors = self.encode_queries(queries) if queries else np.zeros((0, self.index.d), np.float32)
        if vectors.shape[1] != self.index.d:
            raise ValueError(f"query model {self.settings['model']!r} gives {vectors.shape[1]}-d vectors but the dense index "
                             f"holds {self.index.d}-d vectors; use the model the KB was built with")
        return self.search_vectors(vectors, top_k)
