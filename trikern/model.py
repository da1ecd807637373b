"""The decoder: a Ministral-3-style transformer in plain PyTorch modules (SPEC §2).

One `forward(tokens, positions, cache, pattern, write_cache)` serves every decoding mode: the
attention pattern is an argument (kernels.CAUSAL / BIDIRECTIONAL / QUADRATIC) and whether the pass
writes its K/V to the cache is explicit. Batch 1: tokens are a flat [T] chunk. Every op goes
through `trikern.kernels`, so the model runs on Triton kernels, on the CPU backend or on the PyTorch
references (`backend`; the matmuls' implementation is chosen once, when the model is built).
`forward_hidden` exposes the layer stack to the trainer, which supplies its own attention (the
joint objective's mask) over batched sequences.

Fused weights: each layer holds q/k/v as one `qkv_proj` weight [(Hq + 2 Hkv) D, H] and gate/up as one
`gate_up_proj` weight [2 I, H], so a forward does one matmul for each and splits the output by views.
At batch 1 a forward is bound by reading weights and by per-launch cost, and one larger matmul beats
three small ones on both counts. Checkpoints keep the separate HF tensors: `FUSED` says which rows of
a fused weight each one is, `checkpoint_pieces` / `checkpoint_state` map between the two layouts.

Quantized weights: the loader may replace a layer's qkv_proj / o_proj / gate_up_proj / down_proj by a
`QuantLinear` (int4 or fp8 weight-only; trikern/quant reads the checkpoint formats); nothing else
changes, the draft LoRA included (it adds its product to o_proj's output).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels as K
from .config import ModelConfig, attention_factor, inv_freq
from .kernels.qweight import Fp8Weight, Int4Weight, QuantWeight


class Linear(nn.Linear):
    """nn.Linear whose product is its model's backend's (`kernels.linear_for`): on the CPU, bf16
    inference reads a weight laid out once (kernels/cpu/linear.py). `Transformer` sets it."""

    product = staticmethod(K.linear_for("auto"))

    def forward(self, x):
        return self.product(x, self.weight, self)

    # A one-token CPU step calls ~25 of these: skip nn.Module's hook dispatch (~2 us a call; trikern
    # registers no hooks on them). Like any module, it still runs `forward`.
    __call__ = forward


class QuantLinear(nn.Module):
    """A linear layer on a weight-only quantized weight (kernels/qweight.py: int4 group-wise or fp8
    per row), computed by `kernels.quant_linear` on its model's backend. The weight's tensors are
    non-persistent buffers (they move with `.to()`; `state_dict` and `checkpoint_pieces` leave them
    out: the quantized checkpoint formats are trikern/quant's). `perm`: an act-order GPTQ weight's
    columns are the inputs in group order, so the input is gathered to match first."""

    FIELDS = {Int4Weight: ("packed", "scales", "zeros"), Fp8Weight: ("weight", "scale")}

    def __init__(self, w: QuantWeight, perm: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        self.kind, self.group = type(w), getattr(w, "group", None)
        self.out_features, self.in_features = w.shape
        for name in self.FIELDS[self.kind]:
            self.register_buffer(name, getattr(w, name), persistent=False)
        self.register_buffer("perm", perm, persistent=False)
        self.backend = backend
        self._qweight = None

    @property
    def qweight(self) -> QuantWeight:
        """The weight over the current buffers: one object for as long as they stay the same tensors
        (after `.to()` a new one), since kernels keep per-weight state on it (the CPU backend's copies)."""
        w, names = self._qweight, self.FIELDS[self.kind]
        if w is None or any(getattr(w, n) is not getattr(self, n) for n in names):
            fields = [getattr(self, n) for n in names]
            w = self._qweight = self.kind(*fields, self.group) if self.kind is Int4Weight else self.kind(*fields)
        return w

    def forward(self, x):
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return K.quant_linear(x, self.qweight, backend=self.backend)

    __call__ = forward  # as Linear: no hook dispatch on the decode path


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


# Fused parameter (under a layer) -> the checkpoint tensors it stacks, in row order.
FUSED = {
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, D = cfg.hidden_size, cfg.head_dim
        self.sizes = (cfg.num_attention_heads * D, cfg.num_key_value_heads * D, cfg.num_key_value_heads * D)
        self.qkv_proj = Linear(H, sum(self.sizes), bias=False)
        self.o_proj = Linear(cfg.num_attention_heads * D, H, bias=False)
        self.lora = None  # (A [r, in], B [out, r], scale) when a draft adapter is loaded

    def out(self, x, lora: bool):
        y = self.o_proj(x)
        if lora and self.lora is not None:
            a, b, scale = self.lora
            y = y + scale * F.linear(F.linear(x, a), b)
        return y


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.sizes = (cfg.intermediate_size, cfg.intermediate_size)
        self.gate_up_proj = Linear(cfg.hidden_size, sum(self.sizes), bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    """Parameter names match the checkpoint's minus its prefix (`encoder.` / `model.`), except the
    fused `qkv_proj` / `gate_up_proj`, which stand for the checkpoint's separate tensors (`FUSED`)."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.backend = K.check_backend(backend)
        self.product = K.linear_for(backend)  # x @ W.T for every Linear and the head: chosen once
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", inv_freq(cfg.rope, cfg.head_dim), persistent=False)
        self.attn_factor = attention_factor(cfg.rope)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.fused = False  # the layers run as fused linears (`fuse`)
        for m in self.modules():
            if isinstance(m, Linear):
                m.product = self.product

    # -- checkpoint layout ---------------------------------------------------------------
    def checkpoint_pieces(self) -> dict[str, tuple[str, slice | None]]:
        """Checkpoint-layout name (no prefix) -> (parameter name, its rows: a slice, or None for the
        whole parameter), in the order the unfused model declared them (q, k, v, o, gate, up, down,
        norms), so code that walks the pieces in order (random init) draws what it always drew."""
        if self.fused:
            raise RuntimeError("checkpoint layout: this model's qkv_proj / gate_up_proj rows are in the fused "
                               "linears' order (Transformer.fuse); load the checkpoint again to export or train")
        out = {}
        for pname in self.state_dict():
            local = next((f for f in FUSED if pname.endswith("." + f)), None)
            if local is None:
                out[pname] = (pname, None)
                continue
            prefix = pname[: -len(local)]
            start = 0
            for piece, n in zip(FUSED[local], self.get_submodule(prefix + local.split(".")[0]).sizes):
                out[prefix + piece] = (pname, slice(start, start + n))
                start += n
        return out

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The parameters under their checkpoint-layout names (no prefix), detached as in
        `state_dict`; the pieces of a fused weight are row views of it (no copies): export them, or
        fill them in place (under no_grad, like any in-place write to a parameter's storage)."""
        state = self.state_dict()
        return {name: state[p] if rows is None else state[p][rows]
                for name, (p, rows) in self.checkpoint_pieces().items()}

    # -- pieces --------------------------------------------------------------------------
    def head_weight(self):
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _rope_args(self):
        r = self.cfg.rope
        return self.inv_freq, self.attn_factor, r.llama_4_scaling_beta, r.original_max_position_embeddings or 1

    def forward_hidden(self, tokens, positions, attend, lora=False, kv=None):
        """Layer stack over flat tokens [N] at `positions` [N]; `attend(i, q, k, v) -> o` gives the
        attention pattern ([N, H, D] tensors, RoPE applied). Returns final-normed hidden [N, H].
        `kv(i)`: (K, V of layer i, the slots this pass writes) for a fused model, whose qkv product
        writes them itself; `attend` is then called with `written=True`."""
        if self.fused:
            return self._fused_hidden(tokens, positions, attend, lora, kv)
        cfg, be = self.cfg, self.backend
        N = tokens.shape[0]
        Hq, I = cfg.num_attention_heads, cfg.intermediate_size
        Hqk = Hq + cfg.num_key_value_heads
        x = self.embed_tokens(tokens)
        # The PyTorch reference's cos / sin, once for every layer (the Triton kernel computes its own).
        table = None if K.use_triton(be, x) else K.rope_table(positions, *self._rope_args())
        residual = None
        for i, layer in enumerate(self.layers):
            if residual is None:
                h, residual = K.rmsnorm(x, layer.input_layernorm.weight, cfg.rms_norm_eps, backend=be), x
            else:
                h, residual = K.add_rmsnorm(x, residual, layer.input_layernorm.weight, cfg.rms_norm_eps, backend=be)
            at = layer.self_attn
            # One matmul; q / k / v are head-range views of its output (the kernels take row strides).
            qkv = at.qkv_proj(h).view(N, -1, cfg.head_dim)
            q, k, v = qkv[:, :Hq], qkv[:, Hq:Hqk], qkv[:, Hqk:]
            q, k = K.rope(q, k, positions, *self._rope_args(), backend=be, table=table)
            o = attend(i, q, k, v).reshape(N, -1)
            x = at.out(o, lora)
            h, residual = K.add_rmsnorm(x, residual, layer.post_attention_layernorm.weight, cfg.rms_norm_eps,
                                        backend=be)
            m = layer.mlp
            gu = m.gate_up_proj(h)
            gate, up = gu[:, :I], gu[:, I:]
            x = m.down_proj(K.swiglu(gate, up, backend=be))
        return K.add_rmsnorm(x, residual, self.norm.weight, cfg.rms_norm_eps, backend=be)[0]

    # -- the fused layer: five launches (kernels/fused_linear.py) ----------------------------
    def fusable(self) -> bool:
        """Whether `fuse` applies: plain (unquantized) linears on a backend that runs the fused ops
        (triton, or their references); the CPU backend keeps laid-out copies of the weights as they are."""
        plain = all(isinstance(getattr(m, name), Linear) for layer in self.layers
                    for m, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                                    (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")))
        return plain and self.cfg.head_dim % 2 == 0 and \
            K.resolve(self.backend, self.embed_tokens.weight) in ("triton", "torch")

    @torch.no_grad()
    def fuse(self) -> "Transformer":
        """Run every layer as five launches: qkv (+ RMSNorm, RoPE, the K/V cache write), attention,
        o_proj (+ residual), gate_up (+ RMSNorm, SwiGLU), down (+ residual). Re-lays qkv_proj's and
        gate_up_proj's rows in place (no second copy of the weights), so the model is then for
        inference only (its checkpoint layout is refused). On CUDA each fused op's tuner also times
        the unfused path (cuBLAS + the separate kernels) and runs whichever is faster."""
        if self.fused:
            return self
        if not self.fusable():
            raise ValueError(f"fuse: needs plain linears on the triton or torch backend (backend={self.backend!r}, "
                             f"device {self.embed_tokens.weight.device})")
        cfg = self.cfg
        I, Hq, Hkv, D = cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        for layer in self.layers:
            w = layer.self_attn.qkv_proj.weight
            w.copy_(K.interleave_qkv(w, Hq, Hkv, D))
            w = layer.mlp.gate_up_proj.weight
            w.copy_(K.interleave_gate_up(w[:I], w[I:]))
        self.fused = True
        return self

    def _fused_hidden(self, tokens, positions, attend, lora, kv):
        cfg, be, eps = self.cfg, self.backend, self.cfg.rms_norm_eps
        N = tokens.shape[0]
        r = self.embed_tokens(tokens)  # the residual stream: each fused product adds onto it
        rope = self._rope_args()
        for i, layer in enumerate(self.layers):
            at, m = layer.self_attn, layer.mlp
            kc, vc, slots = kv(i) if kv is not None else (None, None, None)
            q, k, v = K.norm_qkv_rope_cache(r, layer.input_layernorm.weight, eps, at.qkv_proj.weight, positions,
                                            *rope, kc, vc, slots, kv_heads=cfg.num_key_value_heads,
                                            head_dim=cfg.head_dim, backend=be)
            o = attend(i, q, k, v, written=slots is not None).reshape(N, -1)
            r = K.linear_residual(o, at.o_proj.weight, r, backend=be)
            if lora and at.lora is not None:  # the draft adapter: two small products more, draft passes only
                a, b, scale = at.lora
                r = r + scale * F.linear(F.linear(o, a), b)
            h = K.norm_gate_up_swiglu(r, layer.post_attention_layernorm.weight, eps, m.gate_up_proj.weight,
                                      backend=be)
            r = K.linear_residual(h, m.down_proj.weight, r, backend=be)
        return K.rmsnorm(r, self.norm.weight, eps, backend=be)

    def logits(self, hidden):
        return self.product(hidden, self.head_weight(), self)

    # -- the one inference entry point ---------------------------------------------------
    def forward(self, tokens, positions, cache=None, pattern=K.CAUSAL, write_cache=False, sub_block=0,
                lora=False, logits_index=None, return_hidden=False):
        """Logits [T, V] (or [len(logits_index), V]) for a chunk of tokens [T] at `positions` [T].

        The chunk attends to the committed cache entries and to itself under the attention `pattern`
        (kernels.CAUSAL / BIDIRECTIONAL / QUADRATIC; QUADRATIC needs `sub_block`). With
        `write_cache`, its K/V land in the cache's scratch slots [length, length + T); the caller
        then commits or compacts them. `lora` enables the draft adapter on this pass. With
        `return_hidden`, the final-normed hidden states [T, H] come back instead, for callers that
        need the head on rows chosen only after looking at other rows' logits (`self.logits`).
        """
        if write_cache and cache is None:
            raise ValueError("forward: write_cache=True needs a cache")
        if cache is None:
            empty = torch.empty(self.cfg.num_key_value_heads, 0, self.cfg.head_dim,
                                dtype=self.embed_tokens.weight.dtype, device=tokens.device)
            length = 0
        else:
            # The Triton kernels read the length on the device (no host sync: CUDA graphs capture;
            # under the interpreter too, so a CPU run launches what a GPU one does); the CPU
            # backend reads it once here rather than in every layer's attention.
            length = cache.length if cache.length.is_cuda or K.use_triton(self.backend, tokens) else int(cache.length)
            if write_cache:
                slots = cache.scratch_slots(tokens.shape[0])

        def attend(i, q, k, v, written=False):
            if cache is None:
                kc = vc = empty
            else:
                kc, vc = cache.layer(i)
                if write_cache and not written:
                    cache.write(i, k, v, slots)
            return K.attention(q, k, v, kc, vc, length, pattern, sub_block, self.scale, backend=self.backend,
                               chunk_in_cache=write_cache)

        kv = (lambda i: (*cache.layer(i), slots)) if write_cache else None
        return self.output(self.forward_hidden(tokens, positions, attend, lora, kv), logits_index, return_hidden)

    def output(self, hidden, logits_index=None, return_hidden=False):
        """What a forward returns from its last hidden states: them, or the logits of `logits_index`'s
        rows (all by default)."""
        if return_hidden:
            return hidden
        if logits_index is not None:
            hidden = hidden[logits_index]
        return self.logits(hidden)
