"""The on-disk knowledge base (KB): chunks, optional embeddings, one sub-directory per index.

    my_kb/
      chunks.parquet     one row per chunk (id "<doc_id>#<k>", doc_id, title, content, source, metadata JSON, ...)
      embeddings.npy     (N, d) float32, L2-normalised; only when a dense or hybrid index was asked for
      simple/ bm25/ dense/ hybrid/   each retriever's own files
      manifest.json      written LAST: format, kb_id, counts, settings, sha256 + size of every file

A directory without manifest.json is not a KB (an interrupted build leaves none). Loading checks
the format version and every checksum, so a truncated or edited file fails loudly instead of
silently retrieving the wrong passages. Nothing is pickled.

kb_id is a hash of what the KB holds and how it was made (`kb_identity`): the chunks' content,
the chunker settings, the embedder (model, precision, dimension) and each index's settings; never a
path, KB name, time or host, so the same documents give the same kb_id wherever they are built.
The paths a build read from are recorded under "inputs", outside the identity. Every file,
manifest included, is a function of the inputs and settings alone (no build time, ordering
independent of PYTHONHASHSEED): a rebuild is byte-identical (docs/REPRODUCIBILITY.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, atomic_write_json, sha256_file
from nanochat.retrieval.base import Document
from nanochat.retrieval.registry import NEEDS_EMBEDDINGS, dense_import_error, expand_types, get_retriever_class, in_build_order

FORMAT = "nanochat-kb"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks.parquet"
EMBEDDINGS = "embeddings.npy"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
OLD_FORMAT_FILES = ("documents.pkl", "metadata.json", "index.faiss", "embeddings.pkl")
CHECK_BLOCK = 16_384  # embedding rows checked at a time (a memmapped matrix is never read whole)


class KnowledgeBaseError(ValueError):
    """A KB that exists but cannot be trusted: wrong format, version, or a checksum mismatch."""


def not_found_message(path) -> str:
    return (f"Knowledge base not found: {path}\n"
            f"Expected a directory holding {MANIFEST}, {CHUNKS} and one sub-directory per index "
            f"(simple/, bm25/, dense/, hybrid/){', plus ' + EMBEDDINGS + ' for dense/hybrid'}.\n"
            f"Build one with: python -m nanochat.retrieval --documents docs.jsonl --output {path} --type simple")


@contextlib.contextmanager
def atomic_dir(final_dir):
    """Yield an empty temp directory next to final_dir; swap it into place only on success."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; an index is as readable as the rest of the KB
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def passage_texts(chunks) -> list[str]:
    """The text every retriever indexes for a chunk: its title, a newline, its content."""
    return [f"{t}\n{c}" if t else c for t, c in zip(chunks["title"], chunks["content"])]


def chunks_fingerprint(chunks) -> str:
    """sha256 over the chunk fields that affect retrieval, normalised: the same chunks give the same hash
    whether they are in memory or read back from Parquet (a missing source is None in one, NaN in the other)."""
    import pandas as pd
    h = hashlib.sha256()
    cols = [c for c in ("id", "doc_id", "title", "content", "source", "metadata") if c in chunks.columns]
    for row in chunks[cols].itertuples(index=False, name=None):
        row = [v if isinstance(v, str) or not pd.isna(v) else None for v in row]
        h.update(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


LEGACY_CHUNKER_KEYS = ("source",)  # older builds put the chunks file's path here; never part of the identity


def identity_chunker(chunker: dict | None) -> dict | None:
    """The chunker settings that enter kb_id: path-free, None when unknown (e.g. chunks from another tool)."""
    clean = {k: v for k, v in (chunker or {}).items() if k not in LEGACY_CHUNKER_KEYS}
    return clean or None


def kb_identity(fingerprint: str, chunker: dict | None, embedding: dict | None, indexes: dict) -> dict:
    """What kb_id hashes: content and settings only (no path, KB name, time or host)."""
    return {"chunks": fingerprint, "chunker": identity_chunker(chunker),
            "embedder": {k: embedding.get(k) for k in ("model", "precision", "dimension")} if embedding else None,
            "indexes": indexes}


def kb_id_of(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def _file_entries(root: Path, rel_paths: list[str]) -> dict:
    return {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in rel_paths}


def _dir_files(root: Path, sub: str) -> list[str]:
    """An index directory's files, without hidden ones (temp files or directories a killed build left)."""
    base = root / sub
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts))


def _read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return m if isinstance(m, dict) and m.get("format") == FORMAT and m.get("format_version") == FORMAT_VERSION else None
    except (OSError, ValueError):
        return None


# -----------------------------------------------------------------------------
# Loading

class KnowledgeBase:
    """A loaded, verified KB. Chunks and embeddings are read on first use."""

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._chunks = None
        self._embeddings = None
        self._retrievers: dict = {}

    @classmethod
    def load(cls, path, verify: bool = True) -> "KnowledgeBase":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            old = [f for f in OLD_FORMAT_FILES if (path / f).exists()] if path.is_dir() else []
            if old:
                raise KnowledgeBaseError(
                    f"Unsupported knowledge base format at {path}: found {', '.join(old)} (an old, pickle-based layout) "
                    f"and no {MANIFEST}. This version never unpickles files; rebuild the KB with: "
                    f"python -m nanochat.retrieval --documents docs.jsonl --output {path} --type simple")
            raise FileNotFoundError(not_found_message(path))
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise KnowledgeBaseError(f"{mpath}: not a nanochat knowledge base manifest (invalid JSON: {e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise KnowledgeBaseError(f"{mpath}: foreign file, not a nanochat knowledge base manifest "
                                     f"(expected \"format\": \"{FORMAT}\"); rebuild with python -m nanochat.retrieval")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise KnowledgeBaseError(f"{mpath}: knowledge base format version {manifest.get('format_version')!r} is not supported "
                                     f"(this code reads version {FORMAT_VERSION}); rebuild the KB with python -m nanochat.retrieval")
        kb = cls(path, manifest)
        kb.check_files(verify_hash=verify)
        return kb

    def check_files(self, verify_hash: bool = True) -> None:
        """Every file in the manifest exists with its recorded size (and sha256 when verify_hash)."""
        files = self.manifest.get("files", {})
        missing = [rel for rel in files if not (self.path / rel).is_file()]
        if missing:
            raise FileNotFoundError(not_found_message(self.path) + f"\nIncomplete: missing file(s) {', '.join(missing)}")
        for rel, info in files.items():
            p = self.path / rel
            if p.stat().st_size != info["size"]:
                raise KnowledgeBaseError(f"Knowledge base corrupted: {p} has {p.stat().st_size} bytes, manifest says {info['size']}; rebuild the KB")
            if verify_hash and sha256_file(p) != info["sha256"]:
                raise KnowledgeBaseError(f"Knowledge base corrupted: {p} sha256 does not match {self.path / MANIFEST}; "
                                         "the file was modified after the build. Rebuild the KB")

    @property
    def kb_id(self) -> str:
        return self.manifest["kb_id"]

    @property
    def retriever_types(self) -> list[str]:
        return list(self.manifest.get("retrievers", {}))

    @property
    def chunks(self):
        if self._chunks is None:
            from nanochat.data.chunking import read_chunks
            self._chunks = read_chunks(self.path / CHUNKS)
        return self._chunks

    @property
    def embeddings(self) -> np.ndarray | None:
        """(N, d) float32, memory-mapped read-only: pages are read on use, not all at load."""
        if self._embeddings is None and EMBEDDINGS in self.manifest.get("files", {}):
            self._embeddings = np.load(self.path / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        return self._embeddings

    def retriever(self, retriever_type: str, **settings):
        if retriever_type not in self.retriever_types:
            raise KnowledgeBaseError(
                f"Knowledge base {self.path} has no '{retriever_type}' index (it has: {', '.join(self.retriever_types) or 'none'}). "
                f"Add one with: python -m nanochat.retrieval --chunks {self.path / CHUNKS} --output {self.path} --type {retriever_type}")
        key = (retriever_type, tuple(sorted(settings.items())))
        if key not in self._retrievers:
            cls = get_retriever_class(retriever_type)
            self._retrievers[key] = cls.load(self, **settings) if settings else cls.load(self)
        return self._retrievers[key]

    def document(self, row: int, score: float = 0.0, rank: int | None = None, retriever: str | None = None) -> Document:
        """Chunk row -> Document (id = chunk id; metadata carries doc_id, chunk_index, rank)."""
        r = self.chunks.iloc[int(row)]
        meta = r.get("metadata")
        meta = json.loads(meta) if isinstance(meta, str) and meta else dict(meta or {})
        meta.update({"doc_id": r["doc_id"], "chunk_index": int(r.get("chunk_index", 0)), "row": int(row)})
        if rank is not None:
            meta["rank"] = rank
        if retriever:
            meta["retriever"] = retriever
        src = r.get("source")
        return Document(id=r["id"], title=r["title"], content=r["content"], score=float(score),
                        source=None if src is None or (isinstance(src, float) and np.isnan(src)) else src, metadata=meta)


# -----------------------------------------------------------------------------
# Building

def _model_key(model) -> str:
    """How a KB names its embedder: a local model directory by its content hash (embeddings.model_id), so the
    kb_id of a KB embedded by a fine-tuned model follows the weights and never the folder they sit in."""
    if Path(str(model)).expanduser().is_dir():
        from nanochat.retrieval.embeddings import model_id
        return model_id(model)
    return str(model)


def _compute_embeddings(chunks, model: str, precision: str, show_progress: bool, embedding_cache=None):
    try:
        from nanochat.retrieval.embeddings import embedder_info, encode_texts
        if embedding_cache:  # only texts the cache lacks are encoded (nanochat.retrieval.embed_cache)
            from nanochat.retrieval.embed_cache import cached_encode
            emb, _ = cached_encode(passage_texts(chunks), model, embedding_cache, precision=precision,
                                   show_progress=show_progress)
        else:
            emb = encode_texts(passage_texts(chunks), model_name=model, precision=precision, show_progress=show_progress)
        info = embedder_info(model, precision)
    except ImportError as e:
        if (getattr(e, "name", "") or "").split(".")[0] in ("sentence_transformers", "faiss", "transformers"):
            raise dense_import_error(e, "dense/hybrid index") from e
        raise
    return np.asarray(emb, dtype=np.float32), dict(info)


def _drop_pages(arr) -> None:
    """Release a memmap's pages from our RSS after reading them (they stay in the page cache)."""
    mapped = getattr(arr, "_mmap", None)
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)


def _check_embeddings(emb: np.ndarray, n: int, where: str) -> np.ndarray:
    """Shape, dtype and unit norms, checked CHECK_BLOCK rows at a time; a float32 memmap stays a memmap."""
    if not isinstance(emb, np.ndarray) or emb.dtype != np.float32:
        emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"{where}: embeddings have shape {emb.shape}, expected ({n}, dim) for {n} chunks; "
                         "re-run python -m nanochat.retrieval.embeddings on the same chunks.parquet")
    lo, hi = np.inf, -np.inf
    for start in range(0, n, CHECK_BLOCK):
        norms = np.linalg.norm(emb[start:start + CHECK_BLOCK], axis=1)
        lo, hi = min(lo, float(norms.min())), max(hi, float(norms.max()))
        _drop_pages(emb)
    if n and not (abs(lo - 1.0) <= 1e-3 and abs(hi - 1.0) <= 1e-3):
        raise ValueError(f"{where}: embeddings are not L2-normalised (norms {lo:.4f}..{hi:.4f})")
    return emb


def _build(chunks, output_dir, retriever_types, chunker: dict | None, n_documents: int, embeddings=None,
           embedding_info=None, model: str = DEFAULT_MODEL, precision: str = "auto",
           retriever_settings: dict | None = None, documents_sha256: str | None = None, inputs: dict | None = None,
           show_progress: bool = True, embedding_cache=None, bm25_tokens=None) -> KnowledgeBase:
    from nanochat.data.chunking import chunks_to_frame
    import pandas as pd
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunker = identity_chunker(chunker)
    if not isinstance(chunks, pd.DataFrame):
        chunks = chunks_to_frame(chunks)
    chunks = chunks.copy(deep=False)  # its attrs carry the chunker into our chunks.parquet, not into the caller's frame
    chunks.attrs = {"chunker": chunker} if chunker else {}
    if len(chunks) == 0:
        raise ValueError("no chunks to index (were all documents rejected?)")
    types = expand_types(retriever_types)
    settings = dict(retriever_settings or {})
    if "dense" in types:  # queries must be encoded by the model that encoded the chunks
        emb_model = (embedding_info or {}).get("model") or _model_key(model)
        settings["dense"] = {"model": emb_model, "precision": precision, **settings.get("dense", {})}
    fingerprint = chunks_fingerprint(chunks)
    old = _read_manifest(out)
    same_chunks = old is not None and old.get("chunks_fingerprint") == fingerprint
    kept = {t: v for t, v in (old or {}).get("retrievers", {}).items() if same_chunks and t not in types}
    # the manifest goes first: from here until the new one is written the directory is not a KB
    (out / MANIFEST).unlink(missing_ok=True)
    for t in (old or {}).get("retrievers", {}):
        if t not in kept and t not in types:
            shutil.rmtree(out / t, ignore_errors=True)  # stale: built from other chunks
    with atomic_path(out / CHUNKS) as tmp:
        chunks.to_parquet(tmp, index=False)

    # Embeddings end up in out/embeddings.npy and are read back memory-mapped: with the block-wise
    # checks and FAISS adds, a build holds one copy of the matrix (inside the index) plus a block.
    emb_info = old.get("embedding") if same_chunks and old else None
    needs_emb = bool(NEEDS_EMBEDDINGS & set(types))
    emb = None
    if embeddings is not None:
        if isinstance(embeddings, (str, os.PathLike)):
            src = Path(embeddings)
            raw = np.load(src, mmap_mode="r", allow_pickle=False)
            same = src.resolve() == (out / EMBEDDINGS).resolve()
            checked = _check_embeddings(raw, len(chunks), str(src))
            if raw.dtype == np.float32 and not same:
                del raw, checked
                with atomic_path(out / EMBEDDINGS) as tmp:
                    shutil.copyfile(src, tmp)  # kernel-side copy: never in our memory
            elif raw.dtype != np.float32:
                save_npy(out / EMBEDDINGS, checked)  # e.g. float64 from another tool: stored as float32
                del raw, checked
        else:
            save_npy(out / EMBEDDINGS, _check_embeddings(embeddings, len(chunks), "embeddings"))
        emb_info = dict(embedding_info or {"model": _model_key(model), "precision": precision})
        if str(emb_info["model"]).startswith("sha256:") and "model_path" not in emb_info:
            emb_info["model_path"] = str(Path(str(model)).expanduser().resolve())  # where queries' encoder is loaded from
        emb = np.load(out / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    elif needs_emb:
        reuse = emb_info and emb_info.get("model") == _model_key(model) and (out / EMBEDDINGS).is_file()
        if reuse:
            emb = _check_embeddings(np.load(out / EMBEDDINGS, mmap_mode="r", allow_pickle=False), len(chunks),
                                    str(out / EMBEDDINGS))
        else:
            computed, emb_info = _compute_embeddings(chunks, model, precision, show_progress, embedding_cache)
            save_npy(out / EMBEDDINGS, _check_embeddings(computed, len(chunks), f"encode_texts({model!r})"))
            del computed
            emb = np.load(out / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    if emb is not None:
        emb_info = {**emb_info, "dimension": int(emb.shape[1]), "normalized": True, "dtype": "float32"}
    elif not (emb_info and (out / EMBEDDINGS).is_file() and any(t in NEEDS_EMBEDDINGS for t in kept)):
        emb_info = None
        (out / EMBEDDINGS).unlink(missing_ok=True)

    retrievers = dict(kept)
    for t in types:
        cls = get_retriever_class(t)
        extra = {"tokens": [str(x) for x in bm25_tokens]} if t == "bm25" and bm25_tokens else {}
        used = cls.build(out, chunks, dict(settings.get(t, {})), emb, **extra)
        retrievers[t] = {"settings": used or {}}
    retrievers = {t: retrievers[t] for t in in_build_order(retrievers)}

    rel_files = [CHUNKS] + ([EMBEDDINGS] if emb_info else [])
    for t in retrievers:
        files = _dir_files(out, t)
        retrievers[t]["files"] = files
        rel_files += files
    identity = kb_identity(fingerprint, chunker, emb_info, {t: v["settings"] for t, v in retrievers.items()})
    # No build time or host here: the manifest is a function of the inputs (a rebuild is byte-identical,
    # so DVC and sha256 comparisons see no change). The paths read from are provenance, outside kb_id.
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "kb_id": kb_id_of(identity), "identity": identity,
        "counts": {"documents": int(n_documents), "chunks": int(len(chunks))},
        "chunker": chunker, "chunks_fingerprint": fingerprint, "documents_sha256": documents_sha256,
        "embedding": emb_info, "retrievers": retrievers,
        "inputs": {k: str(v) for k, v in (inputs or {}).items() if v is not None},
        "files": _file_entries(out, rel_files),
    }
    atomic_write_json(out / MANIFEST, manifest)
    return KnowledgeBase.load(out, verify=False)


def build_knowledge_base(documents, output_dir, retriever_types=("simple",), model: str = DEFAULT_MODEL,
                         chunk_tokens: int = 256, chunk_overlap: int = 32, validation: str = "strict",
                         precision: str = "auto", bm25_settings: dict | None = None,
                         retriever_settings: dict | None = None, rejected_path=None,
                         show_progress: bool = True, embedding_cache=None) -> KnowledgeBase:
    """documents (JSONL path, folder of .md/.txt, or list of dicts) -> validated, chunked, indexed KB.

    embedding_cache: a directory (nanochat.retrieval.embed_cache) shared by KB versions: only chunks whose text
    it lacks are encoded, with the same vectors as a full encode."""
    from nanochat.data.chunking import chunk_documents, chunker_settings
    from nanochat.data.documents import content_hash, load_documents
    docs = load_documents(documents, mode=validation, rejected_path=rejected_path)
    rows = chunk_documents(docs, chunk_tokens, chunk_overlap, show_progress=show_progress)
    settings = dict(retriever_settings or {})
    if bm25_settings:
        settings["bm25"] = {**settings.get("bm25", {}), **bm25_settings}
    docs_hash = hashlib.sha256("".join(f"{d['id']}\t{content_hash(d['content'])}\n" for d in docs).encode()).hexdigest()
    inputs = {"documents": documents} if isinstance(documents, (str, os.PathLike)) else None
    return _build(rows, output_dir, retriever_types, chunker_settings(chunk_tokens, chunk_overlap), len(docs),
                  model=model, precision=precision, retriever_settings=settings, documents_sha256=docs_hash,
                  inputs=inputs, show_progress=show_progress, embedding_cache=embedding_cache)


def build_knowledge_base_from_chunks(chunks_path, output_dir, retriever_types=("simple",), embeddings_path=None,
                                     embedder_info: dict | str | None = None, model: str = DEFAULT_MODEL,
                                     precision: str = "auto", bm25_settings: dict | None = None,
                                     retriever_settings: dict | None = None, chunker: dict | None = None,
                                     show_progress: bool = True, embedding_cache=None, bm25_tokens=None) -> KnowledgeBase:
    """The Snakemake path: chunks.parquet (+ embeddings.npy from the embed stage) -> KB.

    embedder_info: dict or path to a JSON file describing the embeddings (model, precision, ...);
    default: the sidecar `<embeddings stem>.json` when present.
    chunker: the chunker settings for kb_id; default: those stored in chunks.parquet by
    `python -m nanochat.data.chunking` (then those of the KB the file came from; else unknown, None).
    embedding_cache: see build_knowledge_base (used when embeddings_path is None and an index needs vectors).
    bm25_tokens: the per-shard token files of `python -m nanochat.retrieval.shards bm25-tokens`, in chunk
    order: the BM25 index is built from them instead of tokenizing again (same files as without them).
    """
    from nanochat.data.chunking import read_chunks
    chunks = read_chunks(chunks_path)
    if embedder_info is None and embeddings_path is not None and Path(embeddings_path).with_suffix(".json").is_file():
        embedder_info = Path(embeddings_path).with_suffix(".json")  # the embed stage's sidecar (embeddings.json)
    info_path = embedder_info if isinstance(embedder_info, (str, os.PathLike)) else None
    if isinstance(embedder_info, (str, os.PathLike)):
        embedder_info = json.loads(Path(embedder_info).read_text(encoding="utf-8"))
    if embedder_info and embedder_info.get("model"):
        model = embedder_info["model"]
    settings = dict(retriever_settings or {})
    if bm25_settings:
        settings["bm25"] = {**settings.get("bm25", {}), **bm25_settings}
    chunker = (identity_chunker(chunker) or identity_chunker(chunks.attrs.get("chunker"))
               or identity_chunker((_read_manifest(Path(chunks_path).parent) or {}).get("chunker")))
    n_docs = int(chunks["doc_id"].nunique())
    inputs = {"chunks": chunks_path, "embeddings": embeddings_path, "embedder_info": info_path}
    return _build(chunks, output_dir, retriever_types, chunker, n_docs, embeddings=embeddings_path,
                  embedding_info=embedder_info, model=model, precision=precision, retriever_settings=settings,
                  inputs=inputs, show_progress=show_progress, embedding_cache=embedding_cache, bm25_tokens=bm25_tokens)
