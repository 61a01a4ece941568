"""A Transformer becomes a Transformer/Mamba hybrid: attention layers swapped for Mamba-2 mixers, then distilled.

Initialisation follows "The Mamba in the Llama" (Wang et al., 2024). Linear attention and an SSM compute the
same kind of sum, y_t = sum_s (C_t . B_s) x_s with a decay in between, where attention has q_t . k_s and v_s.
So a replaced layer's mixer gets one B/C group per attention head (d_state = head dim, ngroups = n_head) and
one SSM head per attention head (headdim = head dim, d_inner = n_embd, i.e. expand 1), and:

    C <- W_q      B <- W_k      x <- W_v      out_proj <- W_o

With GQA (n_kv_head < n_head) each key/value head's rows are repeated for the query heads that share it, as
attention itself does. The causal conv starts as the identity (last tap 1), so C, B and x start as the
projections themselves (through Mamba's SiLU). Three more choices make the new mixer start as a linear attention
rather than as an attention layer plus noise (measured in bench/hybridize.py: the step-0 KL of a T,T,M,M student
falls from 1.12 to 0.62 nats, against 1.17 with the layers removed):
- D = 0: attention has no skip path from a token's own value.
- dt is one constant per head (its in_proj rows zero, dt = 0.1) and A is set so that the state decays by
  DECAY per token: a softmax-attention layer of a small model looks mostly at recent tokens.
- The gate z gets every row equal to the mean direction of the layer's input, scaled so z is about GATE on
  average (`gate_direction`, measured on a few rows of the distillation text). Then silu(z) is one positive
  number per token across a head's channels, and the gated RMSNorm that follows divides it out: the gate starts
  neutral and the norm gives each head a fixed output scale, as softmax weights summing to one do.
Everything else (embeddings, every MLP, the layers kept as attention, the head) is copied from the teacher.

Distillation: KL(teacher || student) of the next-token distributions, optionally plus a normalised MSE between
the student's and the teacher's outputs of each replaced layer (`hidden_weight`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# How replaced layers start: from the attention weights (Mamba in the Llama); Mamba's own init with a zero output
# projection (a new Mamba layer in this project: the layer starts as the identity, as nanochat's c_proj does); or
# Mamba's own init as mamba-ssm makes it, output projection included (the layer starts as noise in the residual).
INITS = ("attention", "random", "random_out")
TRAINABLE = ("all", "mixers")     # what distillation updates: every parameter, or only the new mixers
DECAY = 0.85   # per-token state decay of an attention-initialised mixer (bench/hybridize.py: 0.8-0.9 start best)
DT = 0.1       # its constant step size (mamba-ssm's dt_max); A = -log(DECAY) / DT
GATE = 4.0     # mean pre-activation of its gate: silu is close to linear and positive there


def student_config(teacher_config, block_pattern):
    """The teacher's config with some T layers made M, the mixers shaped to take over the attention weights."""
    from nanochat.gpt import parse_block_pattern
    tc = teacher_config
    pattern = parse_block_pattern(block_pattern, tc.n_layer)
    added = [i for i, (old, new) in enumerate(zip(tc.block_pattern, pattern)) if old != new]
    wrong = [i for i in added if tc.block_pattern[i] != "T" or pattern[i] != "M"]
    if wrong:
        raise ValueError(f"--block_pattern {','.join(pattern)}: layers {wrong} would change "
                         f"{[tc.block_pattern[i] for i in wrong]} -> {[pattern[i] for i in wrong]}; hybridize only "
                         f"turns attention (T) layers of {','.join(tc.block_pattern)} into Mamba (M)")
    if not added:
        raise ValueError(f"--block_pattern {','.join(pattern)} replaces no attention layer of the teacher "
                         f"({','.join(tc.block_pattern)}); mark the layers to replace with M")
    if "M" in tc.block_pattern:  # existing Mamba layers keep their own shape: only one shape per config
        raise ValueError("the teacher already has Mamba layers; hybridize starts from an all-attention model")
    head_dim = tc.n_embd // tc.n_head
    return dataclasses.replace(tc, block_pattern=pattern, mamba_version=2, mamba_expand=1, mamba_headdim=head_dim,
                               mamba_d_state=head_dim, mamba_ngroups=tc.n_head), added


@torch.no_grad()
def gate_direction(layer_inputs: torch.Tensor) -> torch.Tensor:
    """(N, C) inputs of one layer -> w with w . h = 1 on average: the mean input direction, for a neutral gate."""
    h = layer_inputs.reshape(-1, layer_inputs.size(-1)).float()
    mean = h.mean(0)
    return mean / (h @ mean).mean().clamp_min(1e-8)


@torch.no_grad()
def init_mixer_from_attention(mixer, attn, n_head: int, n_kv_head: int, gate_w: torch.Tensor | None = None) -> None:
    """Copy W_q/W_k/W_v/W_o of one attention layer into a Mamba2 mixer shaped by student_config, and start it
    as a linear attention (D = 0, constant dt and decay, and a neutral gate when gate_w is given)."""
    D = attn.head_dim
    H, G, N = n_head, mixer.ngroups, mixer.d_state
    assert (mixer.nheads, mixer.headdim, G, N, mixer.d_ssm) == (H, D, H, D, H * D), "mixer not shaped by student_config"
    rep = n_head // n_kv_head
    per_head = lambda w: w.view(n_kv_head, D, -1).repeat_interleave(rep, dim=0).reshape(H * D, -1)
    W = mixer.in_proj.weight  # rows: [z0, x0 (empty here), z, x, B, C, dt]
    d_mlp = (W.size(0) - 2 * mixer.d_ssm - 2 * G * N - mixer.nheads) // 2
    x0 = 2 * d_mlp + mixer.d_ssm  # first row of x
    W[x0:x0 + H * D] = per_head(attn.c_v.weight)
    W[x0 + H * D:x0 + H * D + G * N] = per_head(attn.c_k.weight)
    W[x0 + H * D + G * N:x0 + H * D + 2 * G * N] = attn.c_q.weight
    mixer.out_proj.weight.copy_(attn.c_proj.weight)
    W[-mixer.nheads:] = 0.0  # dt rows: dt = softplus(dt_bias) = DT for every token
    mixer.dt_bias.fill_(math.log(math.expm1(DT)))
    mixer.A_log.fill_(math.log(-math.log(DECAY) / DT))
    mixer.D.zero_()
    if gate_w is not None:
        W[2 * d_mlp:2 * d_mlp + mixer.d_ssm] = GATE * gate_w.to(W.dtype)
    mixer.conv1d.weight.zero_()
    mixer.conv1d.weight[:, :, -1] = 1.0  # identity: each position passes its own x, B, C through
    if mixer.conv1d.bias is not None:
        mixer.conv1d.bias.zero_()


@torch.no_grad()
def layer_inputs(model, layers, tokens: torch.Tensor) -> dict:
    """{layer index: (N, C) the normalised inputs its attention sees} for a batch of token rows."""
    seen, hooks = {}, []
    for i in layers:
        def keep(mod, args, i=i):  # a pre-hook that returns something would replace the layer's input
            seen[i] = args[0].detach().reshape(-1, args[0].size(-1))
        hooks.append(model.transformer.h[i].attn.register_forward_pre_hook(keep))
    try:
        model(tokens.to(model.get_device()))
    finally:
        for h in hooks:
            h.remove()
    return seen


def build_student(teacher, block_pattern, init: str = "attention", seed: int = 0, calibration=None):
    """-> (student GPT on the teacher's device, replaced layer indices). The teacher is not modified.
    calibration: token rows (B, T) of the distillation text; with them the attention init starts its gates
    neutral (see the module docstring), without them the gates keep Mamba's random init."""
    from nanochat.gpt import GPT
    from nanochat.mamba import building_for
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    config, replaced = student_config(teacher.config, block_pattern)
    device = teacher.get_device()
    torch.manual_seed(seed)
    with building_for(device):
        student = GPT(config).to(device)
    student.init_weights()  # replaced layers: Mamba's init (out_proj zero); the rest is overwritten next
    own = student.state_dict()
    shared = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    missing, _ = student.load_state_dict(shared, strict=False)
    new = {f"transformer.h.{i}.mixer." for i in replaced}
    stray = [k for k in missing if not any(k.startswith(p) for p in new)]
    assert not stray, f"student tensors with no teacher counterpart: {stray}"
    if init == "attention":
        inputs = layer_inputs(teacher, replaced, calibration) if calibration is not None else {}
        for i in replaced:
            gate_w = gate_direction(inputs[i]) if i in inputs else None
            init_mixer_from_attention(student.transformer.h[i].mixer, teacher.transformer.h[i].attn,
                                      teacher.config.n_head, teacher.config.n_kv_head, gate_w)
    elif init == "random_out":
        from nanochat.mamba import create_mamba_mixer
        for i in replaced:
            mixer = student.transformer.h[i].mixer
            fresh = create_mamba_mixer(config.n_embd, 2, i, device="cpu", **student.transformer.h[i].kw)
            mixer.out_proj.weight.data.copy_(fresh.out_proj.weight)  # nn.Linear's default init, as mamba-ssm leaves it
    return student, replaced


def trainable_parameters(student, replaced, which: str):
    if which not in TRAINABLE:
        raise ValueError(f"train must be one of {TRAINABLE}, got {which!r}")
    keep = {id(p) for i in replaced for p in student.transformer.h[i].mixer.parameters()}
    for p in student.parameters():
        p.requires_grad_(which == "all" or id(p) in keep)


def kl_to_teacher(student_logits, teacher_logits, keep=None):
    """Mean over kept positions of KL(teacher || student) of the next-token distributions (nats)."""
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, T)
    return kl.mean() if keep is None else kl[keep].mean()


class DistillLoss(nn.Module):
    """student(x) -> KL to the frozen teacher (+ hidden_weight x normalised MSE of the replaced layers' outputs).

    Only the student is a submodule, so DDP wraps and synchronises the student alone; the teacher runs under
    no_grad on every rank.
    """

    def __init__(self, student, teacher, replaced=(), hidden_weight: float = 0.0):
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # plain attribute: not a submodule
        self.hidden_weight = hidden_weight
        self._hidden = {"s": {}, "t": {}}
        if hidden_weight > 0:
            for i in replaced:
                student.transformer.h[i].register_forward_hook(self._keep("s", i))
                teacher.transformer.h[i].register_forward_hook(self._keep("t", i))

    def _keep(self, who, i):
        def hook(module, args, output):
            self._hidden[who][i] = output
        return hook

    def forward(self, x, keep=None):
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        loss = kl_to_teacher(s_logits, t_logits, keep)
        if self.hidden_weight > 0:
            mse = [((self._hidden["s"][i] - h.detach()).pow(2).mean() / h.detach().pow(2).mean().clamp_min(1e-8))
                   for i, h in self._hidden["t"].items()]
            loss = loss + self.hidden_weight * torch.stack(mse).mean()
        return loss


@torch.no_grad()
def evaluate_kl(student, teacher, batches, device, autocast_ctx) -> float:
    """Mean KL(teacher || student) per position over batches of (x, y); y == -1 positions are skipped."""
    import torch.distributed as dist
    total = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = student.training
    student.eval()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        keep = y != -1
        with autocast_ctx:
            kl = kl_to_teacher(student(x), teacher(x), keep)
        n = keep.sum()
        total += torch.stack([kl.double() * n, n.double()])
    student.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")
