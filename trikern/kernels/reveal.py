"""Reveal step of block diffusion (SPEC §4.2): fill the most confident masked positions of a block.

After one bidirectional denoise pass, every still-masked position i gets a candidate x0_i and a
confidence; the most confident masked position is revealed, and so is every masked position whose
confidence reaches the threshold. On device, shape-static, no host sync.

Inputs
  tokens     [T] int64, the block (values at masked positions are ignored).
  masked     [T] bool, True where the position is still a mask. (An explicit flag, not
             tokens == mask_id: the seed is an AR token and may legitimately equal any id.)
  logits     [T, V] from the denoise pass; row i predicts the token *at* position i (no shift).
  threshold  float in [0, 1].
  mask_id    int: its column is excluded before anything else, so it is never a candidate and
             takes no probability mass.
  probs      None (greedy) or [T, V] fp32 sampling distribution (temperature / top-k / top-p
             applied by `trikern.sampling.probs`; its mask column is ignored).
  noise      [T, V] fp32 Exp(1) samples, with `probs`: candidate = argmax(probs / noise), the
             exponential race, i.e. a Gumbel-max sample at the request's temperature.

Rule
  candidate_i  = argmax_v logits[i, v] (greedy) or argmax_v probs[i, v] / noise[i, v], v != mask_id
  confidence_i = softmax(logits[i] with the mask column at -inf, fp32)[candidate_i]
                 (the model's own distribution at temperature 1, over the full vocabulary)
  reveal_i     = masked_i and (confidence_i >= threshold or i == argmax_{j masked} confidence_j)
                 (ties: the lowest index). With no masked position nothing changes.

Outputs
  tokens [T] int64 with candidates written at revealed positions; masked [T] bool updated.

Triton path: two launches, no host sync. A scan splits each row's V columns over SPLIT programs
(BLOCK_V tiles, online max / sum of exp in fp32, candidate score and lowest index per split; the
autotuned config space is verify's vocabulary scan). One program then combines the partials per row
(confidence = exp(x[cand] - max) / sum), finds the most confident masked position and writes the
outputs. Confidences agree with the reference to fp32 rounding (summation order, exp), so a
confidence within ~1e-6 of the threshold, or two masked confidences that close, may resolve
differently; everything else is exact.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION
from .layout import unit_rows
from .vocab_scan import CONFIGS, pick_split, scan_split


def _check(tokens, masked, logits, probs, noise):
    if tokens.dim() != 1 or tokens.dtype != torch.long:
        raise ValueError(f"reveal: tokens must be [T] int64; got {tuple(tokens.shape)} {tokens.dtype}")
    T = tokens.shape[0]
    if masked.shape != (T,) or masked.dtype != torch.bool:
        raise ValueError(f"reveal: masked must be [T={T}] bool; got {tuple(masked.shape)} {masked.dtype}")
    if logits.dim() != 2 or logits.shape[0] != T:
        raise ValueError(f"reveal: logits must be [T={T}, V]; got {tuple(logits.shape)}")
    if (probs is None) != (noise is None):
        raise ValueError("reveal: probs and noise go together (sampled reveal) or are both None (greedy)")
    if probs is not None and (probs.shape != logits.shape or noise.shape != logits.shape):
        raise ValueError(f"reveal: probs {tuple(probs.shape)} and noise {tuple(noise.shape)} must match "
                         f"logits {tuple(logits.shape)}")


def reveal_ref(tokens, masked, logits, threshold, mask_id, probs=None, noise=None):
    _check(tokens, masked, logits, probs, noise)
    V = logits.shape[1]
    not_mask = torch.arange(V, device=logits.device) != mask_id
    x = logits.float().masked_fill(~not_mask, float("-inf"))
    if probs is None:
        cand = torch.argmax(x, dim=-1)
    else:
        # -inf, not 0: with no mass outside the mask column, a 0 there could still win a tie at index 0
        cand = torch.argmax(probs.float().masked_fill(~not_mask, float("-inf")) / noise, dim=-1)
    conf = torch.softmax(x, dim=-1).gather(1, cand[:, None])[:, 0]
    conf_masked = torch.where(masked, conf, torch.full_like(conf, -1.0))
    best = torch.argmax(conf_masked)
    idx = torch.arange(tokens.shape[0], device=tokens.device)
    reveal = masked & ((conf >= threshold) | (idx == best))
    return torch.where(reveal, cand, tokens), masked & ~reveal


@triton.jit
def _reveal_scan_kernel(x_ptr, p_ptr, e_ptr, pm_ptr, pz_ptr, ps_ptr, pi_ptr, V, sx, sp, se, chunk, SPLIT,
                        mask_id, SAMPLED: tl.constexpr, BLOCK_V: tl.constexpr):
    """Row `pid0`, columns of split `pid1`: online max / sum of exp of the logits (mask column at
    -inf) and the candidate's score and lowest index."""
    row = tl.program_id(0)
    s = tl.program_id(1)
    start = s * chunk
    end = tl.minimum(start + chunk, V)
    x_row = x_ptr + row.to(tl.int64) * sx
    m = tl.full([], float("-inf"), tl.float32)
    z = tl.full([], 0.0, tl.float32)
    best = tl.full([], float("-inf"), tl.float32)
    best_i = start
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        live = (cols < end) & (cols != mask_id)
        x = tl.load(x_row + cols, mask=live, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf while nothing is live
        z = z * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        m = m_new
        if SAMPLED:
            pr = tl.load(p_ptr + row.to(tl.int64) * sp + cols, mask=live, other=0.0).to(tl.float32)
            e = tl.load(e_ptr + row.to(tl.int64) * se + cols, mask=live, other=1.0).to(tl.float32)
            score = tl.where(live, tl.div_rn(pr, e), float("-inf"))  # IEEE quotients, as torch's
        else:
            score = x
        tv, ti = tl.max(score, axis=0, return_indices=True)
        better = tv > best  # strict: an earlier tile keeps a tie
        best_i = tl.where(better, off + ti, best_i)
        best = tl.where(better, tv, best)
    k = row * SPLIT + s
    tl.store(pm_ptr + k, m)
    tl.store(pz_ptr + k, z)
    tl.store(ps_ptr + k, best)
    tl.store(pi_ptr + k, best_i)


@triton.jit
def _candidates(x_ptr, pm_ptr, pz_ptr, ps_ptr, pi_ptr, rows, rmask, sx, SPLIT, BLOCK_S: tl.constexpr):
    """(candidate, confidence) of `rows` from the scan's partials."""
    sidx = tl.arange(0, BLOCK_S)
    off = rows[:, None] * SPLIT + sidx[None, :]
    m2 = rmask[:, None] & (sidx < SPLIT)[None, :]
    pm = tl.load(pm_ptr + off, mask=m2, other=float("-inf"))
    pz = tl.load(pz_ptr + off, mask=m2, other=0.0)
    mx = tl.max(pm, axis=1)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    z = tl.where(rmask, tl.sum(pz * tl.exp(pm - mx_safe[:, None]), axis=1), 1.0)
    cand = pick_split(ps_ptr, pi_ptr, rows, rmask, SPLIT, BLOCK_S)
    xc = tl.load(x_ptr + rows.to(tl.int64) * sx + cand, mask=rmask, other=0.0).to(tl.float32)
    return cand.to(tl.int64), tl.exp(xc - mx_safe) / z


@triton.jit
def _reveal_apply_kernel(tok_ptr, masked_ptr, x_ptr, pm_ptr, pz_ptr, ps_ptr, pi_ptr, out_tok_ptr,
                         out_masked_ptr, T, sx, SPLIT, threshold,
                         BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr):
    """One program: the most confident masked position (ties -> the lowest index), then the writes.
    Two passes over row chunks recompute the same (candidate, confidence), so no scratch is needed."""
    best_conf = tl.full([], float("-inf"), tl.float32)
    best_row = T  # no masked position: reveal nothing beyond the threshold rule
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rmask = rows < T
        masked = tl.load(masked_ptr + rows, mask=rmask, other=0) != 0
        _, conf = _candidates(x_ptr, pm_ptr, pz_ptr, ps_ptr, pi_ptr, rows, rmask, sx, SPLIT, BLOCK_S)
        conf_m = tl.where(masked, conf, -1.0)
        cv, ci = tl.max(conf_m, axis=0, return_indices=True)
        better = (cv > best_conf) & (cv >= -0.5)  # conf -1 marks "not masked"
        best_row = tl.where(better, t0 + ci, best_row)
        best_conf = tl.where(better, cv, best_conf)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rmask = rows < T
        masked = tl.load(masked_ptr + rows, mask=rmask, other=0) != 0
        cand, conf = _candidates(x_ptr, pm_ptr, pz_ptr, ps_ptr, pi_ptr, rows, rmask, sx, SPLIT, BLOCK_S)
        reveal = masked & ((conf >= threshold) | (rows == best_row))
        tok = tl.load(tok_ptr + rows, mask=rmask, other=0)
        tl.store(out_tok_ptr + rows, tl.where(reveal, cand, tok), mask=rmask)
        tl.store(out_masked_ptr + rows, (masked & ~reveal).to(tl.uint8), mask=rmask)


APPLY_BLOCK_T = 32


def reveal_triton(tokens, masked, logits, threshold, mask_id, probs, noise, config=None):
    """Triton launcher; `config` forces the vocabulary-scan config (tests), else autotune chooses."""
    _check(tokens, masked, logits, probs, noise)
    T, V = logits.shape
    dev = logits.device
    for name, t in (("tokens", tokens), ("masked", masked), ("probs", probs), ("noise", noise)):
        if t is not None and t.device != dev:
            raise ValueError(f"reveal: {name} is on {t.device}, logits on {dev}")
    for name, t in (("logits", logits), ("probs", probs), ("noise", noise)):
        if t is not None and t.dtype not in autotune.FLOAT_DTYPES:
            raise TypeError(f"reveal: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if V == 0 and T:
        raise ValueError("reveal: logits have an empty vocabulary dimension (V = 0)")
    out_tok = torch.empty_like(tokens)
    out_masked = torch.empty_like(masked)
    if T == 0:
        return out_tok, out_masked
    sampled = probs is not None
    x = unit_rows(logits)
    p = unit_rows(probs) if sampled else x
    e = unit_rows(noise) if sampled else x
    tok = tokens.contiguous()
    msk = masked.contiguous().view(torch.uint8)
    out_msk = out_masked.view(torch.uint8)

    def run(cfg):
        split, per = scan_split(V, cfg)
        pm = torch.empty(T, split, dtype=torch.float32, device=dev)
        pz, ps = torch.empty_like(pm), torch.empty_like(pm)
        pi = torch.empty(T, split, dtype=torch.int32, device=dev)
        _reveal_scan_kernel[(T, split)](x, p, e, pm, pz, ps, pi, V, x.stride(0), p.stride(0), e.stride(0), per,
                                        split, int(mask_id), SAMPLED=sampled, BLOCK_V=cfg["BLOCK_V"],
                                        num_warps=cfg["num_warps"], enable_fp_fusion=FP_FUSION)
        _reveal_apply_kernel[(1,)](tok, msk, x, pm, pz, ps, pi, out_tok, out_msk, T, x.stride(0), split,
                                   float(threshold), BLOCK_T=min(triton.next_power_of_2(T), APPLY_BLOCK_T),
                                   BLOCK_S=triton.next_power_of_2(split), num_warps=4, enable_fp_fusion=FP_FUSION)

    if config is None:
        key = ("sampled" if sampled else "greedy", autotune.bucket(T), V, autotune.dtype_key(logits))
        config = autotune.choose("reveal", key, CONFIGS, run)
    run(config)
    return out_tok, out_masked


def tune_shapes(device):
    """Representative launches for `trikern tune`: diffusion blocks of 8 and 32, NLD-sized vocabulary."""
    def thunk(T, V, sampled):
        def go():
            logits = torch.randn(T, V, device=device, dtype=torch.bfloat16)
            probs = torch.softmax(logits.float(), -1) if sampled else None
            noise = torch.ones(T, V, device=device) if sampled else None
            tokens = torch.zeros(T, dtype=torch.long, device=device)
            reveal_triton(tokens, torch.ones(T, dtype=torch.bool, device=device), logits, 0.9, 0, probs, noise)
        return go
    return [(f"{'sampled' if s else 'greedy'} T={T} V={V}", thunk(T, V, s))
            for V in (32000, 131072) for T in (8, 32) for s in (False, True)]


def aot_variants(arch: int):
    """Every scan config for bf16 logits, greedy and sampled (fp32 probs / noise), and the apply kernel."""
    from .aot import AotVariant
    out = []
    sig = {"x_ptr": "*bf16", "p_ptr": "*fp32", "e_ptr": "*fp32", "pm_ptr": "*fp32", "pz_ptr": "*fp32",
           "ps_ptr": "*fp32", "pi_ptr": "*i32", "V": "i32", "sx": "i64", "sp": "i64", "se": "i64", "chunk": "i32",
           "SPLIT": "i32", "mask_id": "i32"}
    for sampled in (False, True):
        for c in CONFIGS:
            out.append(AotVariant(f"reveal_scan{'+sampled' if sampled else ''}", _reveal_scan_kernel, sig,
                                  {"SAMPLED": sampled, "BLOCK_V": c["BLOCK_V"]}, c))
    sig = {"tok_ptr": "*i64", "masked_ptr": "*u8", "x_ptr": "*bf16", "pm_ptr": "*fp32", "pz_ptr": "*fp32",
           "ps_ptr": "*fp32", "pi_ptr": "*i32", "out_tok_ptr": "*i64", "out_masked_ptr": "*u8", "T": "i32",
           "sx": "i64", "SPLIT": "i32", "threshold": "fp32"}
    out.append(AotVariant("reveal_apply", _reveal_apply_kernel, sig,
                          {"BLOCK_T": APPLY_BLOCK_T, "BLOCK_S": 32}, {"BLOCK_T": APPLY_BLOCK_T, "num_warps": 4}))
    return out
