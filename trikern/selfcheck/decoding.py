"""The decoding checks of `trikern selfcheck`: self-speculation is lossless, and CUDA graphs replay
what eager runs.

- `lossless(model, prompts, ...)`: greedy spec-linear, spec-quadratic and a spec-linear draft tree
  give AR's tokens, token for token, prompt by prompt (fp32: in bf16 a chunked forward may round a
  near-tie differently from a one-token one, so equality is only promised in fp32).
- `graphs(model, ...)`: the decode runtime's `StepRunner` (CUDA graph per pass) hands back what the
  eager forward gives for new inputs after its capture, and whole generations with graphs on equal
  those with graphs off.
- `batch_graphs(model, ...)`: a BatchDecoder whose passes replay CUDA graphs per batch bucket
  (batch/graphs.py) gives each sequence the tokens the eager batch gives, as sequences join and leave.

Each returns (ok, detail, data) as selfcheck's checks do.
"""
from __future__ import annotations

import torch

# (mode, block size as a multiple of the shape's B or a number, tree nodes): every lossless family once.
SPEC_RUNS = (("spec-linear", 1, None), ("spec-quadratic", 1, None), ("spec-linear", 1, "B"))


def random_tiny_model(raw: dict, device, dtype, backend: str, seed: int = 0):
    """A model of `raw`'s shape with weights large enough that greedy decoding has no near-ties
    (std 0.2, norms near 1): a stand-in for trained weights where the embedded model is too slow
    (the Triton interpreter)."""
    from ..config import ModelConfig  # noqa: PLC0415
    from ..model import Transformer  # noqa: PLC0415

    cfg = ModelConfig.from_dict(dict(raw, eos_token_id=None), "selfcheck tiny model")
    g = torch.Generator().manual_seed(seed)
    m = Transformer(cfg, backend=backend)
    with torch.no_grad():
        for name, p in m.checkpoint_state().items():
            norm = name.endswith("layernorm.weight") or name == "norm.weight"
            p.copy_((1 + 0.1 * torch.randn(p.shape, generator=g)) if norm else 0.2 * torch.randn(p.shape, generator=g))
    return m.to(device=device, dtype=dtype).eval()


def lossless(m, prompts: list, new_tokens: int, B: int) -> tuple[bool, str, dict]:
    """`m`: a trikern.api.Model; `prompts`: token id lists. Greedy, the prompt cache off."""
    runs, bad = [], []
    for i, ids in enumerate(prompts):
        ar = m.generate(ids, mode="ar", max_new_tokens=new_tokens, reuse_prefix=False).token_ids
        for mode, mult, nodes in SPEC_RUNS:
            b = B * mult
            tree = b if nodes == "B" else nodes
            r = m.generate(ids, mode=mode, max_new_tokens=new_tokens, block_size=b, tree_nodes=tree,
                           reuse_prefix=False)
            label = f"{mode} B{b}" + (f" tree {tree}" if tree else "")
            same = r.token_ids == ar
            first = next((j for j, (x, y) in enumerate(zip(r.token_ids, ar)) if x != y), min(len(r.token_ids), len(ar)))
            runs.append({"prompt": i, "run": label, "equal": same, "tokens": len(ar),
                         "tokens_per_forward": r.stats["tokens_per_forward"]})
            if not same:
                bad.append(f"prompt {i} {label}: differs from AR at token {first}")
    detail = (f"{len(runs)} generations of {new_tokens} tokens equal AR's" if not bad else "; ".join(bad[:3]))
    return not bad, detail, {"runs": runs}


def graphs(m, prompt: list, new_tokens: int, B: int) -> tuple[bool, str, dict]:
    """`m`: a trikern.api.Model on CUDA."""
    from ..decode import GenerationConfig, new_context  # noqa: PLC0415
    from ..decode.runtime import StepRunner  # noqa: PLC0415
    from ..kernels import QUADRATIC  # noqa: PLC0415

    model, problems, data = m.model, [], {}
    # 1. The runner: call 1 eager, call 2 captures and replays, calls 3-4 replay with new inputs.
    ctx = new_context(model, GenerationConfig(cuda_graphs=True, max_new_tokens=new_tokens, block_size=B),
                      len(prompt), "spec-quadratic")
    n = len(prompt)
    ctx.cache.commit(n)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    T = B * (B + 1)

    def step(tokens, positions):
        return model(tokens, positions, ctx.cache, QUADRATIC, sub_block=B + 1)

    runner, worst, bitwise = StepRunner(ctx), 0.0, True
    with torch.inference_mode():
        for call in range(4):
            tokens = torch.randint(0, model.cfg.vocab_size, (T,), device=ctx.device, generator=g)
            positions = n + torch.arange(T, device=ctx.device)
            got = runner("selfcheck", step, tokens, positions)
            want = step(tokens, positions)
            bitwise &= torch.equal(got, want)
            worst = max(worst, float((got.float() - want.float()).abs().max()))
    data.update(runner_captured=bool(runner.graphs), runner_bitwise=bitwise, runner_max_abs_diff=worst)
    if not runner.graphs:
        problems.append("the StepRunner captured no graph (it fell back to eager)")
    if not bitwise and worst > 1e-2:
        problems.append(f"replayed logits differ from eager by up to {worst:.3g}")
    # 2. Whole generations: graphs on == graphs off.
    for mode in ("ar", "spec-linear", "spec-quadratic"):
        kw = dict(mode=mode, max_new_tokens=new_tokens, block_size=None if mode == "ar" else B, reuse_prefix=False)
        on = m.generate(prompt, cuda_graphs=True, **kw).token_ids
        off = m.generate(prompt, cuda_graphs=False, **kw).token_ids
        data[f"{mode}_equal"] = on == off
        if on != off:
            problems.append(f"{mode}: tokens with CUDA graphs differ from eager")
    detail = ("replay == eager (" + ("bitwise" if bitwise else f"max abs diff {worst:.2e}") + "); ar, spec-linear, "
              "spec-quadratic generations equal with graphs on and off") if not problems else "; ".join(problems)
    return not problems, detail, data


def batch_graphs(m, prompts: list, new_tokens: int, B: int) -> tuple[bool, str, dict]:
    """`m`: a trikern.api.Model on CUDA (fp32: a bucket's padded matmuls may round otherwise in bf16);
    `prompts`: 3 or more token id lists. Two sequences start, the rest join two steps later, and the
    budgets differ, so the batch moves between buckets."""
    from ..batch import BatchDecoder  # noqa: PLC0415

    problems, data = [], {}
    budgets = [new_tokens // (1 + i % 3) for i in range(len(prompts))]
    for mode in ("ar", "spec-linear", "diffusion"):
        outs, captured = {}, 0
        for on in (True, False):
            dec = BatchDecoder(m.model, max_batch=4, mode=mode, block_size=None if mode == "ar" else B,
                               context=max(map(len, prompts)) + new_tokens + 1, cuda_graphs=on)
            seqs = [dec.add(p, max_new_tokens=n) for p, n in zip(prompts[:2], budgets)]
            steps = 0
            while dec.busy or steps < 2:
                if steps == 2:
                    seqs += [dec.add(p, max_new_tokens=n) for p, n in zip(prompts[2:], budgets[2:])]
                dec.step()
                steps += 1
            outs[on] = [s.tokens for s in seqs]
            if on:
                captured = len(dec.graphs.graphs) if dec.graphs.enabled else 0
        data[f"{mode}_equal"], data[f"{mode}_graphs"] = outs[True] == outs[False], captured
        if outs[True] != outs[False]:
            problems.append(f"{mode}: batched tokens with CUDA graphs differ from eager")
        if not captured:
            problems.append(f"{mode}: no batched pass was captured (it fell back to eager)")
    detail = (f"ar, spec-linear B{B}, diffusion B{B}: {len(prompts)} sequences joining and leaving, tokens equal "
              f"with graphs on and off ({sum(v for k, v in data.items() if k.endswith('_graphs'))} graphs)"
              if not problems else "; ".join(problems))
    return not problems, detail, data
