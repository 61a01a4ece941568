"""Upstream nanochat's tokenizer.pkl, read and written without running pickle code.

Upstream saves its tokenizer as `pickle.dump(tiktoken.Encoding)`. Such a file can name any importable
callable, so a plain `pickle.load` of a file someone sent you runs whatever it names. Here a restricted
unpickler admits exactly one global, `tiktoken.core.Encoding`, and even that is replaced by an inert
stand-in that only records the state dict (name, pat_str, mergeable_ranks, special_tokens) from which
a tiktoken Encoding is built. Any other global is refused, naming what the file tried to load.
tiktoken itself is not needed.

The writer emits the same opcodes `pickle.dump` emits for a tiktoken Encoding (protocol 4), so upstream
loads our exports with its own `pickle.load`.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

ALLOWED_GLOBAL = ("tiktoken.core", "Encoding")
PICKLE_FILE = "tokenizer.pkl"


class RefusedPickle(pickle.UnpicklingError):
    """A tokenizer.pkl that names something other than tiktoken's Encoding, or has the wrong shape."""


@dataclass
class EncodingState:
    """What a tiktoken Encoding is made of: its ids are the ranks and the special tokens' values."""
    name: str
    pat_str: str
    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int]

    @property
    def n_vocab(self) -> int:
        return 1 + max([*self.mergeable_ranks.values(), *self.special_tokens.values()])


class _EncodingStandIn:
    """Takes the place of tiktoken.core.Encoding while unpickling: stores the state, runs nothing."""

    def __init__(self, *args, **kwargs):  # only reachable through a REDUCE that real pickles never contain
        self.state = ("called", args, kwargs)

    def __setstate__(self, state):
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, where):
        super().__init__(file)
        self.where = where

    def find_class(self, module, name):
        if (module, name) == ALLOWED_GLOBAL:
            return _EncodingStandIn
        raise RefusedPickle(f"{self.where}: refusing to load {module}.{name}: a tokenizer.pkl may only hold a "
                            f"tiktoken Encoding ({'.'.join(ALLOWED_GLOBAL)}); nothing from this file was run")

    def persistent_load(self, pid):
        raise RefusedPickle(f"{self.where}: refusing a persistent id ({pid!r}) in a tokenizer.pkl")


def read_encoding(path) -> EncodingState:
    """tokenizer.pkl -> EncodingState, refusing any pickle that is not a plain tiktoken Encoding."""
    path = Path(path)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), str(path)).load()
    except RefusedPickle:
        raise
    except Exception as e:  # truncated or corrupt: say which file, whatever the unpickler tripped on
        raise RefusedPickle(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _EncodingStandIn) or not hasattr(obj, "state"):
        raise RefusedPickle(f"{path}: expected a pickled tiktoken Encoding, found {type(obj).__name__}")
    state = obj.state
    if isinstance(state, str):
        raise RefusedPickle(f"{path}: the pickle refers to tiktoken's registered encoding {state!r} by name; its "
                            f"ranks are not in the file (tiktoken would download them). Save the ranks instead")
    if not isinstance(state, dict) or set(state) != {"name", "pat_str", "mergeable_ranks", "special_tokens"}:
        raise RefusedPickle(f"{path}: unexpected Encoding state {state if isinstance(state, tuple) else sorted(state)!r}; "
                            f"expected name, pat_str, mergeable_ranks, special_tokens")
    ranks, specials = state["mergeable_ranks"], state["special_tokens"]
    ok = (isinstance(state["name"], str) and isinstance(state["pat_str"], str) and isinstance(ranks, dict)
          and all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items())
          and isinstance(specials, dict) and all(isinstance(k, str) and type(v) is int for k, v in specials.items()))
    if not ok:
        raise RefusedPickle(f"{path}: Encoding state has the wrong types (mergeable_ranks must map bytes -> int, "
                            f"special_tokens str -> int)")
    return EncodingState(state["name"], state["pat_str"], dict(ranks), dict(specials))


class _TiktokenEncodingRef:
    """Pickles exactly as a tiktoken Encoding does (class global, empty args, state dict), without tiktoken:
    _Writer writes this class under the name tiktoken.core.Encoding."""

    def __init__(self, state: dict):
        self._state = state

    def __reduce_ex__(self, protocol):  # the shape object.__reduce_ex__ gives tiktoken's Encoding
        import copyreg
        return copyreg.__newobj__, (_TiktokenEncodingRef,), self._state


class _Writer(pickle._Pickler):
    """The pure-Python pickler, with one global it writes by name instead of looking it up."""

    def save_global(self, obj, name=None):
        if obj is _TiktokenEncodingRef:
            module, qualname = ALLOWED_GLOBAL
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_encoding(path, enc: EncodingState) -> None:
    """EncodingState -> tokenizer.pkl that `pickle.load` (with tiktoken installed) turns into a tiktoken Encoding."""
    from nanochat.common import atomic_path
    state = {"name": enc.name, "pat_str": enc.pat_str, "mergeable_ranks": dict(enc.mergeable_ranks),
             "special_tokens": dict(enc.special_tokens)}
    buf = io.BytesIO()
    _Writer(buf, protocol=4).dump(_TiktokenEncodingRef(state))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
