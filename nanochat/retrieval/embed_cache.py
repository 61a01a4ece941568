"""Embedding cache: a chunk's vector is computed once per (text, embedder, precision), whatever KB it is in.

Editing 1% of a collection then re-embeds 1% of its chunks; the other KB versions, shards and the retrieval
evaluation read the rest from here. Encoding is batch-invariant (embeddings.same_length_batches), so a vector
from the cache is bit-for-bit the one a full rebuild computes.

    <cache>/<model>-<precision>-<id>/        one directory per embedder (model id, precision, dimension)
        embedder.json                       what the directory holds
        pack-<content hash>.npy             rows (key = sha256 of the text, check, vector), a structured .npy

Safe with many writers at once (concurrent shard jobs, on one host or a shared file system): a job never
edits a pack, it adds one pack of the vectors it computed, written under a hidden temporary name and renamed
into place, so readers see whole packs or none. Each row carries an 8-byte BLAKE2b check over its key and
vector; a row whose check fails (a flipped bit, a half-copied file) is reported and recomputed, never used.

    python -m nanochat.retrieval.embed_cache --cache results/embedding_cache            # per embedder: packs, rows, corrupt rows
    python -m nanochat.retrieval.embed_cache --cache results/embedding_cache --compact  # one pack per embedder, bad rows dropped
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)
KEY_BYTES, CHECK_BYTES = 32, 8
PACK_GLOB = "pack-*.npy"


def text_keys(texts) -> np.ndarray:
    """sha256 of each text (UTF-8) as a (N, 32) uint8 array."""
    keys = np.empty((len(texts), KEY_BYTES), dtype=np.uint8)
    for i, t in enumerate(texts):
        keys[i] = np.frombuffer(hashlib.sha256(str(t).encode("utf-8")).digest(), dtype=np.uint8)
    return keys


def row_checks(keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """8-byte BLAKE2b of key + vector bytes, per row: detects a damaged entry."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty((len(keys), CHECK_BYTES), dtype=np.uint8)
    for i in range(len(keys)):
        h = hashlib.blake2b(keys[i].tobytes(), digest_size=CHECK_BYTES)
        h.update(vectors[i].tobytes())
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


def pack_dtype(dim: int) -> np.dtype:
    return np.dtype([("key", np.uint8, (KEY_BYTES,)), ("check", np.uint8, (CHECK_BYTES,)), ("vec", "<f4", (dim,))])


def embedder_key(model: str, precision: str, dimension: int) -> dict:
    """The cache key besides the text: the embedder's id (a content hash for a local model), its precision, width."""
    return {"model": str(model), "precision": str(precision), "dimension": int(dimension)}


def _prefix(keys: np.ndarray) -> np.ndarray:
    """First 8 key bytes as uint64: sortable stand-in for the key (full keys are compared after the search)."""
    return np.ascontiguousarray(keys[:, :8]).view("<u8").ravel()


class EmbeddingCache:
    """Vectors of one embedder under `root`. `get` returns the cached rows it can trust; `put` adds a pack."""

    def __init__(self, root, model: str, precision: str, dimension: int):
        self.key = embedder_key(model, precision, dimension)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(model)).name)[:40] or "model"
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(root) / f"{slug}-{precision}-{digest}"
        self.dim = int(dimension)
        self.corrupt: list[tuple[str, int]] = []  # (pack, row) found damaged by the last get()

    # -- reading
    def packs(self) -> list[Path]:
        return sorted(self.dir.glob(PACK_GLOB)) if self.dir.is_dir() else []

    def _open(self, path: Path):
        """A pack memory-mapped, or None (reported) when it is not a readable pack of this width."""
        try:
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("embedding cache: unreadable pack %s (%s); its rows are recomputed", path, e)
            self.corrupt.append((str(path), -1))
            return None
        if rows.dtype != pack_dtype(self.dim) or rows.ndim != 1:
            logger.warning("embedding cache: %s is not a pack of %d-d vectors; ignored", path, self.dim)
            self.corrupt.append((str(path), -1))
            return None
        return rows

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found (N,) bool, vectors (N, d) float32; rows not found are zero). Damaged rows count as missing."""
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        self.corrupt = []
        packs = [(p, r) for p in self.packs() if (r := self._open(p)) is not None and len(r)]
        if not packs or n == 0:
            return found, vectors
        all_prefix = np.concatenate([_prefix(np.asarray(r["key"])) for _, r in packs])
        pack_of = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, (_, r) in enumerate(packs)])
        row_of = np.concatenate([np.arange(len(r), dtype=np.int64) for _, r in packs])
        order = np.argsort(all_prefix, kind="stable")
        sorted_prefix = all_prefix[order]
        want = _prefix(keys)
        lo = np.searchsorted(sorted_prefix, want, side="left")
        hi = np.searchsorted(sorted_prefix, want, side="right")
        cand = np.nonzero(hi > lo)[0]
        first = order[lo[cand]]  # the first candidate of each key, read pack by pack (sorted rows: sequential reads)
        got = np.empty(len(cand), dtype=pack_dtype(self.dim))
        for p_i, (_, rows) in enumerate(packs):
            sel = np.nonzero(pack_of[first] == p_i)[0]
            if len(sel):
                got[sel] = rows[row_of[first[sel]]]
        ok = (got["key"] == keys[cand]).all(axis=1) & (row_checks(got["key"], got["vec"]) == got["check"]).all(axis=1)
        found[cand[ok]] = True
        vectors[cand[ok]] = got["vec"][ok]
        for i in cand[~ok]:  # a damaged row, or another key with the same prefix: look at every candidate
            for j in order[lo[i]:hi[i]]:
                path, rows = packs[pack_of[j]]
                row = rows[row_of[j]]
                if not np.array_equal(row["key"], keys[i]):
                    continue
                if not np.array_equal(row_checks(row["key"][None], row["vec"][None])[0], row["check"]):
                    logger.warning("embedding cache: damaged row %d in %s (check mismatch); recomputing it", row_of[j], path)
                    self.corrupt.append((str(path), int(row_of[j])))
                    continue
                vectors[i] = row["vec"]
                found[i] = True
                break
        return found, vectors

    # -- writing
    def put(self, keys: np.ndarray, vectors: np.ndarray) -> Path | None:
        """Add rows as one new pack (atomic rename; the name is a hash of the content, so a repeated write of
        the same rows lands on the same file). Returns the pack's path (None when there is nothing to add)."""
        if len(keys) == 0:
            return None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"embedding cache: vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        rows = np.empty(len(keys), dtype=pack_dtype(self.dim))
        rows["key"], rows["vec"], rows["check"] = keys, vectors, row_checks(keys, vectors)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "embedder.json").is_file():
            atomic_write_json(self.dir / "embedder.json", self.key)
        path = self.dir / f"pack-{hashlib.sha256(rows.tobytes()).hexdigest()[:24]}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rows, allow_pickle=False)
        return path

    def stats(self) -> dict:
        """Packs, rows, distinct keys and damaged rows (every row checked)."""
        n_rows, bad, prefixes = 0, 0, []
        self.corrupt = []
        for p in self.packs():
            rows = self._open(p)
            if rows is None:
                bad += 1
                continue
            rows = np.asarray(rows)
            ok = (row_checks(rows["key"], rows["vec"]) == rows["check"]).all(axis=1)
            bad += int((~ok).sum())
            n_rows += len(rows)
            prefixes.append(_prefix(rows["key"][ok]))
        distinct = len(np.unique(np.concatenate(prefixes))) if prefixes else 0
        return {**self.key, "dir": str(self.dir), "packs": len(self.packs()), "rows": n_rows, "distinct": distinct,
                "damaged": bad}

    def compact(self) -> dict:
        """Rewrite every trusted, distinct row into one pack and remove the old packs (run it while no job writes)."""
        old = self.packs()
        keys, vecs, seen = [], [], set()
        for p in old:
            rows = self._open(p)
            if rows is None:
                continue
            rows = np.asarray(rows)
            ok = (row_checks(rows["key"], rows["vec"]) == rows["check"]).all(axis=1)
            for r in rows[ok]:
                k = r["key"].tobytes()
                if k not in seen:
                    seen.add(k)
                    keys.append(r["key"])
                    vecs.append(r["vec"])
        new = self.put(np.array(keys, dtype=np.uint8).reshape(-1, KEY_BYTES),
                       np.array(vecs, dtype=np.float32).reshape(-1, self.dim)) if keys else None
        for p in old:
            if p != new:
                p.unlink(missing_ok=True)
        return self.stats()


def open_cache(root, model_name: str, precision: str = "auto", device=None, dimension: int | None = None) -> EmbeddingCache:
    """The cache of one embedder: model id, precision as resolved on this device, width (from the model if not given)."""
    from nanochat.retrieval import embeddings as E
    dev = E._resolve_device(device)
    prec = E.resolve_precision(precision, dev)
    model_id = E.model_id(model_name) if hasattr(E, "model_id") else str(model_name)  # a local model: its content hash
    if dimension is None:
        dimension = E._dimension(E.load_model(model_name, dev))
    return EmbeddingCache(root, model_id, prec, dimension)


def cached_encode(texts, model_name: str, cache_dir, batch_size: int = 32, precision: str = "auto", device=None,
                  show_progress: bool = True, out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """encode_texts through the cache: only texts not cached (or damaged there) are encoded, then added.

    Returns (vectors, stats) with stats = {"rows", "hits", "computed", "damaged"}. The vectors equal
    encode_texts(texts) bit for bit (batch-invariant encoding).
    """
    from nanochat.retrieval.embeddings import encode_texts
    texts = [str(t) for t in texts]
    cache = open_cache(cache_dir, model_name, precision, device)
    keys = text_keys(texts)
    found, vectors = cache.get(keys)
    if out is None:
        out = vectors
    else:
        out[found] = vectors[found]
    missing = np.nonzero(~found)[0]
    if len(missing):
        # one encode per distinct missing text (duplicates in a corpus are encoded once)
        uniq, first, inverse = np.unique(_prefix(keys[missing]), return_index=True, return_inverse=True)
        todo = missing[first]
        fresh = encode_texts([texts[i] for i in todo], model_name, batch_size, precision, device, show_progress)
        out[missing] = fresh[inverse.ravel()]
        cache.put(keys[todo], fresh)
    stats = {"rows": len(texts), "hits": int(found.sum()), "computed": int(len(np.unique(_prefix(keys[missing])))
                                                                           if len(missing) else 0),
             "damaged": len(cache.corrupt), "cache_dir": str(cache.dir)}
    logger.info("embedding cache %s: %d rows, %d cached, %d computed, %d damaged", cache.dir, stats["rows"],
                stats["hits"], stats["computed"], stats["damaged"])
    return out, stats


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser
    from nanochat.common import print0, setup_logging
    parser = ArgumentParser(description="Inspect or compact an embedding cache.")
    parser.add_argument("--cache", required=True, help="cache root (e.g. results/embedding_cache)")
    parser.add_bool("--compact", default=False, help="rewrite each embedder's trusted rows into one pack")
    args = parser.parse_args(argv)
    setup_logging()
    root = Path(args.cache)
    dirs = sorted(d for d in root.iterdir() if (d / "embedder.json").is_file()) if root.is_dir() else []
    if not dirs:
        print0(f"no embedding cache under {root}")
        return 1
    damaged = 0
    for d in dirs:
        key = json.loads((d / "embedder.json").read_text(encoding="utf-8"))
        cache = EmbeddingCache(root, key["model"], key["precision"], key["dimension"])
        s = cache.compact() if args.compact else cache.stats()
        damaged += s["damaged"]
        print0(json.dumps(s))
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
