"""Inference for the hybrid GPT: prefill the prompt once, then decode one token at a time.

The cache holds what each layer type needs to continue a sequence without recomputing it:
attention layers keep keys/values (B, Hkv, T, D) per layer; Mamba layers keep their conv and
SSM state in a mamba-ssm style `InferenceParams` (key_value_memory_dict[layer_idx]). Several
samples share one prefill: the batch-1 cache is replicated to num_samples rows.

Two ways to generate:
- one prompt at a time: `generate` (streaming), `generate_batch` (nanochat's: num_samples answers to one
  prompt), `generate_from_conversation` (the guide's API);
- many prompts side by side: `generate_many(prompts)` and `generate_batch_conversations(conversations)`.
  Prompts of different lengths are left-padded into one batch (see InferenceCache); greedy answers are the
  ones the one-at-a-time path gives, many times faster (bench/eval_speed.py).

Long prompts: a prompt longer than config.sequence_len is an error (ValueError naming the sizes);
`generate_from_conversation` first asks the tokenizer to fit the prompt into sequence_len - max_tokens
tokens (retrieved documents are trimmed first), and `generate` caps max_tokens, with one warning,
so prompt + answer never run past sequence_len (stopped == "context").
"""
import inspect
import logging
import re
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

CITATION_RE = re.compile(r"\[(\d+)\]")

# Rows decoded together by generate_many when no batch_size is given, per device type. CPU: bench/eval_speed.py.
DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 128, "mps": 32}


def default_batch_size(device):
    """generate_many's batch size (rows per forward) on `device` (a torch.device or its name)."""
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, DEFAULT_BATCH_SIZE["cpu"])


@dataclass
class Generation:
    """One answer of generate_many: its ids (stop token excluded) and why it ended."""
    tokens: list
    stopped: str  # "stop_token" | "max_tokens" | "context" (prompt + answer reached sequence_len first) | "cancelled"
    stop_token: int | None
    num_prompt_tokens: int


class InferenceCache:
    """KV cache for attention layers + InferenceParams for Mamba layers, sharing one position counter.

    A batch of prompts of different lengths is left-padded to one length: `pads` (B,) says how many padding
    columns each row starts with. Then attention and the copy head mask those columns, rotary positions count from
    each row's first real token (`row_positions`), and Mamba mixers keep padding out of their state (`pad_mask`).
    Without pads (or all zero) every method below returns None and the model runs exactly as unbatched.
    """

    def __init__(self, batch_size, max_seqlen, pads=None):
        from nanochat.mamba import InferenceParams
        self.batch_size = batch_size
        self.max_seqlen = max_seqlen
        self.pos = 0
        self.kv = {}  # layer_idx -> (k, v), each (B, Hkv, max_seqlen, D), allocated on first use
        self.mamba_params = InferenceParams(max_seqlen=max_seqlen, max_batch_size=batch_size,
                                            seqlen_offset=0, key_value_memory_dict={})
        self.copy_context = None  # (keys (B, max_seqlen, C), ids (B, max_seqlen)) of the copy head, filled to pos
        self.pads = None  # (B,) long: padding columns at the start of each row; None = no padding
        self.max_pad = 0
        self.valid = None  # (B, max_seqlen) bool: the column holds a real token of the row
        if pads is not None:
            pads = torch.as_tensor(pads, dtype=torch.long)
            if pads.numel() != batch_size:
                raise ValueError(f"pads has {pads.numel()} entries for batch_size={batch_size}")
            self.max_pad = int(pads.max())
            if self.max_pad > 0:
                self.pads = pads
                self.valid = torch.arange(max_seqlen, device=pads.device)[None, :] >= pads[:, None]
        self._mask_memo = (None, None)

    def get_pos(self):
        return self.pos

    def insert_kv(self, layer_idx, k, v):
        """Write k, v (B, Hkv, T, D) at the current position; return all keys/values so far (B, Hkv, pos+T, D)."""
        B, H, T, D = k.shape
        end = self.pos + T
        if end > self.max_seqlen:
            raise ValueError(f"inference cache overflow: position {end} > max_seqlen={self.max_seqlen}")
        if layer_idx not in self.kv:
            shape = (B, H, self.max_seqlen, D)
            self.kv[layer_idx] = (k.new_zeros(shape), v.new_zeros(shape))
        k_cache, v_cache = self.kv[layer_idx]
        k_cache[:, :, self.pos:end] = k
        v_cache[:, :, self.pos:end] = v
        return k_cache[:, :, :end], v_cache[:, :, :end]

    def extend_copy_context(self, start, keys, ids):
        """Write the copy head's keys (B, T, C) and ids (B, T) at columns start..start+T; return all so far
        (keys, ids) and the key mask (B, start+T) (None without padding)."""
        B, T, C = keys.shape
        end = start + T
        if self.copy_context is None:
            self.copy_context = (keys.new_zeros(B, self.max_seqlen, C), ids.new_zeros(B, self.max_seqlen))
        all_keys, all_ids = self.copy_context
        all_keys[:, start:end] = keys
        all_ids[:, start:end] = ids
        return all_keys[:, :end], all_ids[:, :end], None if self.valid is None else self.valid[:, :end]

    def row_positions(self, T):
        """Rotary positions (B, T) of the next T columns, each row counted from its first real token; None = pos.."""
        if self.pads is None:
            return None
        cols = self.pos + torch.arange(T, device=self.pads.device)
        return (cols[None, :] - self.pads[:, None]).clamp_min(0)

    def pad_mask(self, T):
        """(B, T) bool, False where the next T columns are padding; None when they are all real tokens."""
        if self.pads is None or self.pos >= self.max_pad:
            return None
        return self.valid[:, self.pos:self.pos + T]

    def attention_mask(self, Tq, Tk):
        """(B, 1, Tq, Tk) bool for Tq queries ending at column Tk - 1 over keys 0..Tk-1: causal, real keys only,
        and each query may see itself (a padding query has no real key). None without padding."""
        if self.pads is None:
            return None
        if Tq == 1 and Tk > self.max_pad:  # decoding: the new column is real in every row
            return self.valid[:, None, None, :Tk]
        key = (Tq, Tk)
        if self._mask_memo[0] != key:  # the same for every attention layer of one forward
            cols = torch.arange(Tk, device=self.pads.device)
            qcols = cols[Tk - Tq:]
            causal = cols[None, :] <= qcols[:, None]  # (Tq, Tk)
            mask = (causal[None] & self.valid[:, None, :Tk]) | (cols[None, :] == qcols[:, None])[None]
            self._mask_memo = (key, mask[:, None])
        return self._mask_memo[1]

    def advance(self, num_tokens):
        """Called by GPT.forward after all layers have consumed num_tokens new positions."""
        self.pos += num_tokens
        self.mamba_params.seqlen_offset += num_tokens

    def select(self, rows):
        """A new cache holding only `rows` (LongTensor, repeats allowed) of this one, in that order."""
        take = lambda t: t[rows.to(t.device)]  # advanced indexing keeps the memory layout (mamba-ssm's conv state)
        other = InferenceCache(len(rows), self.max_seqlen, None if self.pads is None else take(self.pads))
        other.advance(self.pos)
        other.kv = {i: (take(k), take(v)) for i, (k, v) in self.kv.items()}
        if self.copy_context is not None:
            other.copy_context = tuple(take(t) for t in self.copy_context)
        other.mamba_params.key_value_memory_dict = {
            i: tuple(take(s) for s in states) for i, states in self.mamba_params.key_value_memory_dict.items()
        }
        return other

    def replicate(self, num_samples):
        """A new cache with every batch-1 state repeated num_samples times (one prefill, many samples)."""
        assert self.batch_size == 1, f"replicate expects a batch-1 cache, got batch {self.batch_size}"
        return self.select(torch.zeros(num_samples, dtype=torch.long))


@torch.inference_mode()
def sample_next_token(logits, rng, temperature=1.0, top_k=None):
    """logits: (B, V) -> (B, 1) ids. temperature 0 = greedy; top_k keeps the k most likely."""
    assert temperature >= 0.0, f"temperature must be >= 0, got {temperature}"
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        vals, idx = torch.topk(logits, k, dim=-1)  # (B, k)
        probs = torch.softmax(vals / temperature, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=rng)  # (B, 1)
        return idx.gather(1, choice)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=rng)


def parse_citations(text):
    """The [n] document numbers cited in text, in order of first appearance."""
    seen = []
    for m in CITATION_RE.finditer(text):
        n = int(m.group(1))
        if n not in seen:
            seen.append(n)
    return seen


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self._banned = {}  # device -> ids an answer may not contain (see banned_tokens)

    def stop_tokens(self):
        return {self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.get_bos_token_id()}

    def banned_tokens(self):
        """Special tokens an answer never contains: all but the stop tokens. A small model sometimes puts
        <|assistant_start|> where the next digits belong ("19<|assistant_start|>"); greedy decoding would print
        it and lose the answer, so decoding takes the best ordinary token instead. Tokenizers without special
        tokens (bench stand-ins) ban nothing."""
        names = getattr(self.tokenizer, "get_special_tokens", lambda: [])()
        return sorted({self.tokenizer.encode_special(n) for n in names} - self.stop_tokens())

    def _allowed(self, logits):
        """logits (B, V) with the banned tokens at -inf (a new tensor: the input may be an expanded view)."""
        device = logits.device
        if device not in self._banned:
            self._banned[device] = torch.tensor(self.banned_tokens(), dtype=torch.long, device=device)
        banned = self._banned[device]
        return logits if banned.numel() == 0 else logits.index_fill(-1, banned, float("-inf"))

    def _max_new_tokens(self, num_prompt, max_tokens):
        """Check the prompt fits and cap max_tokens so prompt + answer <= sequence_len."""
        seq_len = self.model.config.sequence_len
        if num_prompt == 0:
            raise ValueError("generate() needs at least one prompt token (start with <|bos|>)")
        if num_prompt > seq_len:
            raise ValueError(f"prompt has {num_prompt} tokens but the model's sequence_len is {seq_len}; "
                             f"retrieve fewer or shorter documents (--top_k, --max_doc_length) or shorten the input")
        room = seq_len - num_prompt
        if max_tokens is None:
            return room
        if max_tokens > room:
            logger.warning("max_tokens=%d capped to %d: prompt (%d tokens) + answer must fit sequence_len=%d",
                           max_tokens, room, num_prompt, seq_len)
            return room
        return max_tokens

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        """Stream generation: yields (token_column, token_masks), one id (and mask 1 = sampled) per sample.

        A sample that emits <|assistant_end|> or <|bos|> is finished; the stream ends when all are.
        """
        assert isinstance(tokens, list) and all(isinstance(t, int) for t in tokens), "tokens must be a list of ints"
        max_new = self._max_new_tokens(len(tokens), max_tokens)
        if max_new <= 0:
            return
        device = self.model.get_device()
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        stop = self.stop_tokens()

        # prefill once at batch 1, then replicate the cache for the samples
        cache = InferenceCache(batch_size=1, max_seqlen=len(tokens) + max_new)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
        logits = self._allowed(self.model.forward(ids, kv_cache=cache)[:, -1, :])  # (1, V)
        if num_samples > 1:
            cache = cache.replicate(num_samples)
            logits = logits.expand(num_samples, -1)                     # (N, V)

        done = [False] * num_samples
        for step in range(max_new):
            next_ids = sample_next_token(logits, rng, temperature, top_k)  # (N, 1)
            column = next_ids[:, 0].tolist()
            for i, tok in enumerate(column):
                done[i] = done[i] or tok in stop
            yield column, [1] * num_samples
            if all(done) or step == max_new - 1:
                break
            logits = self._allowed(self.model.forward(next_ids, kv_cache=cache)[:, -1, :])  # (N, V)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Non-streaming generate: (results, masks); each result is prompt + generated ids, stop token excluded."""
        stop = self.stop_tokens()
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        finished = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (tok, m) in enumerate(zip(column, column_masks)):
                if finished[i]:
                    continue
                if tok in stop:
                    finished[i] = True
                else:
                    results[i].append(tok)
                    masks[i].append(m)
        return results, masks

    def generate_from_conversation(self, conversation, max_tokens=256, temperature=0.0, top_k=None, seed=42):
        """The guide's API: conversation {"messages": [...]} -> (answer text, info).

        info: tokens (generated ids, stop token excluded), num_prompt_tokens, stopped
        ("stop_token" | "max_tokens" | "context"), stop_token (id or None), citations ([n] numbers in text).
        """
        prompt = self._render(conversation, max_tokens)
        max_new = self._max_new_tokens(len(prompt), max_tokens)
        stop = self.stop_tokens()
        generated, stop_token = [], None
        for column, _ in self.generate(prompt, 1, max_new, temperature, top_k, seed):
            if column[0] in stop:
                stop_token = column[0]
                break
            generated.append(column[0])
        if stop_token is not None:
            stopped = "stop_token"
        else:
            stopped = "max_tokens" if max_new == max_tokens else "context"
        text = self.tokenizer.decode(generated)
        info = dict(tokens=generated, num_prompt_tokens=len(prompt), stopped=stopped, stop_token=stop_token,
                    citations=parse_citations(text))
        return text, info

    # -------------------------------------------------------------------------
    # many prompts side by side

    def _render(self, conversation, max_tokens):
        """A conversation's prompt ids, fitted into sequence_len - max_tokens when the tokenizer can trim."""
        if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
            raise ValueError('conversation must be a dict {"messages": [{"role": ..., "content": ...}, ...]}, '
                             f"got {type(conversation).__name__}")
        seq_len = self.model.config.sequence_len
        prompt_budget = max(seq_len - max_tokens, seq_len // 2)
        render = self.tokenizer.render_for_completion
        if "max_tokens" in inspect.signature(render).parameters:
            return render(conversation, max_tokens=prompt_budget)  # documents give way first
        return render(conversation)

    def generate_batch_conversations(self, conversations, max_tokens=256, temperature=0.0, top_k=None, seed=42,
                                     seeds=None, batch_size=None, progress=False):
        """generate_from_conversation for many conversations at once -> [(text, info)] in input order.

        Same prompts, same info (tokens, num_prompt_tokens, stopped, stop_token, citations); greedy texts equal
        generate_from_conversation's. Sampling, seeds and batch_size: see generate_many.
        """
        prompts = [self._render(c, max_tokens) for c in conversations]
        out = []
        for g in self.generate_many(prompts, max_tokens, temperature, top_k, seed, seeds,
                                    batch_size=batch_size, progress=progress):
            text = self.tokenizer.decode(g.tokens)
            out.append((text, dict(tokens=g.tokens, num_prompt_tokens=g.num_prompt_tokens, stopped=g.stopped,
                                   stop_token=g.stop_token, citations=parse_citations(text))))
        return out

    @torch.inference_mode()
    def generate_many(self, prompts, max_tokens=None, temperature=0.0, top_k=None, seed=42, seeds=None,
                      num_samples=1, batch_size=None, progress=False, on_token=None):
        """Answers to many prompts (lists of ids), decoded side by side -> list of Generation, in input order.

        num_samples answers per prompt share its prefill; answer j of prompt i is result [i * num_samples + j].
        batch_size: rows (prompts x samples) per forward; default DEFAULT_BATCH_SIZE for the model's device.
        Prompts are sorted by length and batched with their neighbours (little padding); a row leaves its batch
        at a stop token or at its budget: max_tokens (one for all, or a list with one per prompt), capped so prompt +
        answer fit sequence_len ("context").
        Greedy (temperature 0): the tokens generate(prompt) gives for each prompt alone.
        Sampling: the num_samples answers of prompt i draw together from one generator seeded seeds[i] (seeds
        defaulting to seed + i), exactly as generate(prompt, num_samples, seed=seeds[i]) draws them: reproducible,
        independent of batch_size and of the other prompts in its batch, and the answers the one-prompt path
        samples -- up to the float rounding by which logits of one row can differ between batch shapes (it decides
        a draw only when it lands on a boundary). An answer that has stopped keeps its place in its group's draws
        (as in generate) but leaves the forward pass.
        progress: show a progress bar (a string is its label).
        on_token(index, token_id): called as each answer grows (index = its place in the result list; stop tokens are
        not reported). Returning False stops that answer there (stopped "cancelled"): a streaming client that left.
        """
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in prompts):
            raise ValueError("prompts must be a list of token-id lists")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        seeds = [seed + i for i in range(len(prompts))] if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
        limits = list(max_tokens) if isinstance(max_tokens, (list, tuple)) else [max_tokens] * len(prompts)
        if len(limits) != len(prompts):
            raise ValueError(f"max_tokens has {len(limits)} entries for {len(prompts)} prompts")
        budgets = [self._budget(i, p, limit) for i, (p, limit) in enumerate(zip(prompts, limits))]
        capped = sum(limit is not None and b < limit for b, limit in zip(budgets, limits))
        if capped:
            logger.warning("max_tokens=%s capped for %d of %d prompts: prompt + answer must fit sequence_len=%d",
                           max_tokens, capped, len(prompts), self.model.config.sequence_len)
        rows = batch_size or default_batch_size(self.model.get_device())
        per_batch = max(1, rows // num_samples)
        results = [None] * (len(prompts) * num_samples)
        todo = []
        for i, p in enumerate(prompts):
            if budgets[i] == 0:  # a full prompt: nothing to generate
                for j in range(num_samples):
                    results[i * num_samples + j] = Generation([], self._why_stopped(0, limits[i]), None, len(p))
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(prompts[i]))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "generate",
                       mininterval=2.0)
            bar.update(len(prompts) - len(todo))
        for start in range(0, len(todo), per_batch):
            chunk = todo[start:start + per_batch]
            report = None if on_token is None else \
                (lambda r, tok, chunk=chunk: on_token(chunk[r // num_samples] * num_samples + r % num_samples, tok))
            gens = self._decode_batch([list(prompts[i]) for i in chunk], [budgets[i] for i in chunk],
                                      [seeds[i] for i in chunk], num_samples, temperature, top_k,
                                      [limits[i] for i in chunk], report)
            for k, i in enumerate(chunk):
                results[i * num_samples:(i + 1) * num_samples] = gens[k * num_samples:(k + 1) * num_samples]
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return results

    def _budget(self, index, prompt, max_tokens):
        """Tokens prompt `index` may generate: max_tokens capped by the room left in sequence_len."""
        seq_len = self.model.config.sequence_len
        if not prompt:
            raise ValueError(f"prompt {index} is empty: every prompt needs at least one token (start with <|bos|>)")
        if len(prompt) > seq_len:
            raise ValueError(f"prompt {index} has {len(prompt)} tokens but the model's sequence_len is {seq_len}; "
                             f"retrieve fewer or shorter documents (--top_k, --max_doc_length) or shorten the input")
        room = seq_len - len(prompt)
        return room if max_tokens is None else min(max_tokens, room)

    @staticmethod
    def _why_stopped(budget, max_tokens):
        return "max_tokens" if budget == max_tokens else "context"

    def _decode_batch(self, prompts, budgets, seeds, num_samples, temperature, top_k, limits, on_token=None):
        """One batch: left-pad, prefill once, decode until every row has stopped -> Generation per row."""
        device = self.model.get_device()
        stop = self.stop_tokens()
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)  # padding id 0: masked everywhere
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        pads = torch.tensor([width - n for n in lengths], dtype=torch.long, device=device)
        cache = InferenceCache(len(prompts), width + max(budgets), pads=pads)
        logits = self._allowed(self.model.forward(ids.to(device), kv_cache=cache, last_only=True)[:, -1, :])  # (B, V)
        owner = [k for k in range(len(prompts)) for _ in range(num_samples)]  # row -> prompt
        if num_samples > 1:
            rows = torch.tensor(owner, device=device)
            cache, logits = cache.select(rows), logits[rows]
        sampler = None if temperature == 0.0 else _GroupSampler(logits, seeds, num_samples, temperature, top_k)
        active = list(range(len(owner)))  # row of each line of the cache
        tokens = [[] for _ in owner]
        results = [None] * len(owner)
        while True:
            if sampler is None:
                next_ids = torch.argmax(logits, dim=-1, keepdim=True)  # (A, 1)
            else:
                next_ids = sampler.draw(logits, active)
            keep = []
            for a, tok in enumerate(next_ids[:, 0].tolist()):
                r = active[a]
                budget, n_prompt = budgets[owner[r]], lengths[owner[r]]
                if tok in stop:
                    results[r] = Generation(tokens[r], "stop_token", tok, n_prompt)
                    continue
                tokens[r].append(tok)
                if on_token is not None and on_token(r, tok) is False:
                    results[r] = Generation(tokens[r], "cancelled", None, n_prompt)
                elif len(tokens[r]) == budget:
                    results[r] = Generation(tokens[r], self._why_stopped(budget, limits[owner[r]]), None, n_prompt)
                else:
                    keep.append(a)
            if not keep:
                return results
            if len(keep) < len(active):  # finished rows leave the batch
                sel = torch.tensor(keep, device=device)
                cache, next_ids = cache.select(sel), next_ids[sel]
                active = [active[a] for a in keep]
            logits = self._allowed(self.model.forward(next_ids, kv_cache=cache)[:, -1, :])


class _GroupSampler:
    """Draws for generate_many at temperature > 0: the num_samples rows of prompt k sample together from one
    generator seeded seeds[k], as generate(prompt, num_samples, seed) does. A row that has stopped keeps its last
    logits in the draw, so its group's random stream advances exactly as in generate (a row's draw depends only on
    its own logits and its slice of the stream)."""

    def __init__(self, logits, seeds, num_samples, temperature, top_k):
        self.last = logits.clone()  # (R, V): every row's latest logits, stale once it has stopped
        self.n, self.temperature, self.top_k = num_samples, temperature, top_k
        self.rngs = []
        for s in seeds:
            self.rngs.append(torch.Generator(device=logits.device))
            self.rngs[-1].manual_seed(s)

    def draw(self, logits, active):
        """Next ids (A, 1) of the active rows (row numbers `active`), given their logits (A, V)."""
        rows = torch.tensor(active, device=logits.device)
        self.last[rows] = logits
        drawn = {}
        for k in sorted({r // self.n for r in active}):  # groups with a row still going
            group = self.last[k * self.n:(k + 1) * self.n]
            ids = sample_next_token(group, self.rngs[k], self.temperature, self.top_k)[:, 0].tolist()
            drawn.update({k * self.n + j: t for j, t in enumerate(ids)})
        return torch.tensor([[drawn[r]] for r in active], dtype=torch.long, device=logits.device)
