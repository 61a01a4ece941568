"""Inference for the hybrid GPT: prefill the prompt once, then decode one token at a time.

The cache holds what each layer type needs to continue a sequence without recomputing it:
attention layers keep keys/values (B, Hkv, T, D) per layer; Mamba layers keep their conv and
SSM state in a mamba-ssm style `InferenceParams` (key_value_memory_dict[layer_idx]). Several
samples share one prefill: the batch-1 cache is replicated to num_samples rows.

Long prompts: a prompt longer than config.sequence_len is an error (ValueError naming the sizes);
`generate_from_conversation` first asks the tokenizer to fit the prompt into sequence_len - max_tokens
tokens (retrieved documents are trimmed first), and `generate` caps max_tokens, with one warning,
so prompt + answer never run past sequence_len (stopped == "context").
"""
import inspect
import logging
import re

import torch

logger = logging.getLogger(__name__)

CITATION_RE = re.compile(r"\[(\d+)\]")


class InferenceCache:
    """KV cache for attention layers + InferenceParams for Mamba layers, sharing one position counter."""

    def __init__(self, batch_size, max_seqlen):
        from nanochat.mamba import InferenceParams
        self.batch_size = batch_size
        self.max_seqlen = max_seqlen
        self.pos = 0
        self.kv = {}  # layer_idx -> (k, v), each (B, Hkv, max_seqlen, D), allocated on first use
        self.mamba_params = InferenceParams(max_seqlen=max_seqlen, max_batch_size=batch_size,
                                            seqlen_offset=0, key_value_memory_dict={})
        self.copy_context = None  # (keys (B, T, C), ids (B, T)) of the copy head, when the model has one

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

    def advance(self, num_tokens):
        """Called by GPT.forward after all layers have consumed num_tokens new positions."""
        self.pos += num_tokens
        self.mamba_params.seqlen_offset += num_tokens

    def replicate(self, num_samples):
        """A new cache with every batch-1 state repeated num_samples times (one prefill, many samples)."""
        assert self.batch_size == 1, f"replicate expects a batch-1 cache, got batch {self.batch_size}"
        rep = lambda t: t.repeat(num_samples, *([1] * (t.dim() - 1)))
        other = InferenceCache(num_samples, self.max_seqlen)
        other.advance(self.pos)
        other.kv = {i: (rep(k), rep(v)) for i, (k, v) in self.kv.items()}
        if self.copy_context is not None:
            other.copy_context = tuple(rep(t) for t in self.copy_context)
        other.mamba_params.key_value_memory_dict = {
            i: tuple(rep(s) for s in states) for i, states in self.mamba_params.key_value_memory_dict.items()
        }
        return other


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

    def stop_tokens(self):
        return {self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.get_bos_token_id()}

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
        logits = self.model.forward(ids, kv_cache=cache)[:, -1, :]     # (1, V)
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
            logits = self.model.forward(next_ids, kv_cache=cache)[:, -1, :]  # (N, V)

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
        if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
            raise ValueError('conversation must be a dict {"messages": [{"role": ..., "content": ...}, ...]}, '
                             f"got {type(conversation).__name__}")
        seq_len = self.model.config.sequence_len
        prompt_budget = max(seq_len - max_tokens, seq_len // 2)
        render = self.tokenizer.render_for_completion
        if "max_tokens" in inspect.signature(render).parameters:
            prompt = render(conversation, max_tokens=prompt_budget)  # documents give way first
        else:
            prompt = render(conversation)
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
