"""The decoder: a Ministral-3-style transformer in plain PyTorch modules (SPEC §2).

One `forward(tokens, positions, cache, pattern, write_cache)` serves every decoding mode: the
attention pattern is an argument (kernels.CAUSAL / BIDIRECTIONAL / QUADRATIC) and whether the pass
writes its K/V to the cache is explicit. Batch 1: tokens are a flat [T] chunk. Every op except the
matmuls goes through `trikern.kernels`, so the model runs on Triton kernels or on their PyTorch
references (`backend`). `forward_hidden` exposes the layer stack to the trainer, which supplies its
own attention (the joint objective's mask) over batched sequences.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels as K
from .config import ModelConfig, attention_factor, inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(H, cfg.num_attention_heads * D, bias=False)
        self.k_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
        self.v_proj = nn.Linear(H, cfg.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * D, H, bias=False)
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
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    """Parameter names match the checkpoint's minus its prefix (`encoder.` / `model.`)."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.backend = K.check_backend(backend)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", inv_freq(cfg.rope, cfg.head_dim), persistent=False)
        self.attn_factor = attention_factor(cfg.rope)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    # -- pieces --------------------------------------------------------------------------
    def head_weight(self):
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _rope(self, q, k, positions):
        r = self.cfg.rope
        return K.rope(q, k, positions, self.inv_freq, self.attn_factor, r.llama_4_scaling_beta,
                      r.original_max_position_embeddings or 1, backend=self.backend)

    def forward_hidden(self, tokens, positions, attend, lora=False):
        """Layer stack over flat tokens [N] at `positions` [N]; `attend(i, q, k, v) -> o` gives the
        attention pattern ([N, H, D] tensors, RoPE applied). Returns final-normed hidden [N, H]."""
        cfg, be = self.cfg, self.backend
        N = tokens.shape[0]
        x = self.embed_tokens(tokens)
        residual = None
        for i, layer in enumerate(self.layers):
            if residual is None:
                h, residual = K.rmsnorm(x, layer.input_layernorm.weight, cfg.rms_norm_eps, backend=be), x
            else:
                h, residual = K.add_rmsnorm(x, residual, layer.input_layernorm.weight, cfg.rms_norm_eps, backend=be)
            at = layer.self_attn
            q = at.q_proj(h).view(N, cfg.num_attention_heads, cfg.head_dim)
            k = at.k_proj(h).view(N, cfg.num_key_value_heads, cfg.head_dim)
            v = at.v_proj(h).view(N, cfg.num_key_value_heads, cfg.head_dim)
            q, k = self._rope(q, k, positions)
            o = attend(i, q, k, v).reshape(N, -1)
            x = at.out(o, lora)
            h, residual = K.add_rmsnorm(x, residual, layer.post_attention_layernorm.weight, cfg.rms_norm_eps,
                                        backend=be)
            m = layer.mlp
            x = m.down_proj(K.swiglu(m.gate_proj(h), m.up_proj(h), backend=be))
        return K.add_rmsnorm(x, residual, self.norm.weight, cfg.rms_norm_eps, backend=be)[0]

    def logits(self, hidden):
        return F.linear(hidden, self.head_weight())

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
        elif write_cache:
            slots = cache.scratch_slots(tokens.shape[0])

        def attend(i, q, k, v):
            if cache is None:
                kc = vc = empty
                n = length
            else:
                kc, vc = cache.layer(i)
                n = cache.length
                if write_cache:
                    cache.write(i, k, v, slots)
            return K.attention(q, k, v, kc, vc, n, pattern, sub_block, self.scale, backend=self.backend)

        hidden = self.forward_hidden(tokens, positions, attend, lora)
        if return_hidden:
            return hidden
        if logits_index is not None:
            hidden = hidden[logits_index]
        return self.logits(hidden)
