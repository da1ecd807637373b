"""The user-facing model object: `trikern.load(...)` -> Model with generate / stream / chat.

Glue only: loading (trikern.loading), tokenization and chat templates (trikern.tokenizer) and the
decoding loops (trikern.decode) are composed here; stop strings and streaming detokenization
(trikern.text, shared with the server's batched engine) are applied on top of the token stream a
decode loop yields. `stream()` returns a `Stream` (text pieces,
then `.result`); the reusable prefix cache is a `PromptCache` (trikern.prompt_cache) the caller may hold.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .checks import check_block_range, check_block_size, is_int
from .decode import GenerationConfig, check_mode, new_context
from .decode.registry import TREE_VARIANTS, check_tree_nodes
from .prompt_cache import PromptCache
from .text import GenerationResult, TextEmitter

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"
# Keyword options of generate / stream / chat besides mode and stop (see Model._gen_config).
OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "block_size", "threshold", "draft_lora",
           "thinking_budget", "cuda_graphs", "tree_nodes")


class Stream:
    """One generation's text pieces as tokens are committed (iterate it), then its `result`.

    `result` is None until the generation ends: after the last piece, or once `close()` (or
    leaving a `with` block) stops it early; then it is the GenerationResult of what was produced
    (`finish_reason` "cancelled" for should_stop or close; its text includes any tail held back
    from the pieces, an incomplete stop-string match or character). Breaking out of a loop leaves
    the generation suspended between steps: `close()` ends it and keeps its cache for the next request.
    """

    def __init__(self, run: Callable[[list], Iterator[str]]):
        """`run(out)`: the generator of pieces. It yields once before any work (this primes it, so
        that `close()` before the first piece still ends it properly) and stores the result in out[0]
        when the generation ends. `out` is not the Stream itself: a dropped Stream frees the
        generator (and its cache) at once, with no reference cycle waiting for the collector."""
        self._out: list = [None]
        self._pieces = run(self._out)
        next(self._pieces)

    @property
    def result(self) -> GenerationResult | None:
        return self._out[0]

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self):
        """Stop the generation (between decode steps; nothing when it has ended already)."""
        self._pieces.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc):
        self.close()


def fused_by_default(model) -> bool:
    """Whether `load` runs the model's layers as fused linears (Transformer.fuse): on CUDA with the
    Triton kernels, unless TRIKERN_FUSED=0. Safe blind: each fused op's tuner also times the
    unfused path (cuBLAS + the separate kernels) and keeps the faster; with tuning off
    (TRIKERN_AUTOTUNE=0) the unfused path runs. On a CPU the CPU backend's own ops run."""
    from .kernels.autotune import switched_off  # noqa: PLC0415
    w = model.embed_tokens.weight
    return w.is_cuda and model.fusable() and not switched_off("TRIKERN_FUSED")


def dtype_reason(weight: torch.Tensor) -> str:
    """Why the model computes in its dtype: the CPU's default (cpu_features.py) or the caller's choice."""
    name = str(weight.dtype).removeprefix("torch.")
    if weight.device.type != "cpu":
        return f"{name}: " + ("the GPU default" if weight.dtype == torch.bfloat16 else "requested")
    from .cpu_features import default_dtype  # noqa: PLC0415

    default, why = default_dtype()
    return why if weight.dtype == default else f"{name}: requested (this CPU's default is {why})"


class Model:
    def __init__(self, model, tokenizer=None, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.cfg = model.cfg
        self.dtype_reason = dtype_reason(model.embed_tokens.weight)
        self.prompt_cache = self.make_prompt_cache()  # used when a request passes no prompt_cache
        self.warmup_s: float | None = None

    @classmethod
    def load(cls, path=None, device=None, dtype=None, backend="auto", lora=None, warmup=False,
             revision=None, quantize=None, group_size=128) -> "Model":
        """`path`: a checkpoint folder or its config.json (default: the embedded model), or a Hugging
        Face hub id "org/name" (downloaded into the HF cache; a local path that exists wins).
        `revision`: branch, tag or commit hash of a hub id (default: main). `warmup`: compile and
        tune the decode shapes now (see `warmup`), not in the first request. `quantize`: "int4"
        (`group_size` columns per scale) or "fp8" quantizes a 16-bit checkpoint's layer linears while
        loading; a quantized checkpoint (GPTQ, compressed-tensors) loads quantized without it."""
        if not isinstance(warmup, bool):
            raise ValueError(f"warmup={warmup!r}: expected True or False")
        from .hub import resolve  # noqa: PLC0415
        from .loading import checkpoint_dir, load_model  # noqa: PLC0415
        from .tokenizer import Tokenizer  # noqa: PLC0415

        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"path={path!r}: expected a checkpoint folder (str or os.PathLike), "
                             f"got {type(path).__name__}")
        path = resolve(path if path is not None else DEFAULT_MODEL, revision)
        if not path.exists():
            raise FileNotFoundError(f"model folder {path} does not exist")
        folder = checkpoint_dir(path)  # config.json -> its folder, so the tokenizer beside it loads too
        model = load_model(folder, device=device, dtype=dtype, backend=backend, lora=lora, quantize=quantize,
                           group_size=group_size)
        if fused_by_default(model):
            model.fuse()
        has_tok = (folder / "tokenizer.json").is_file()
        tok = Tokenizer.from_dir(folder, eos_token_ids=model.cfg.eos_token_ids) if has_tok else None
        m = cls(model, tok, folder)
        if warmup:
            m.warmup()
        return m

    def warmup(self, block_size=None, tree_nodes=None, batch_sizes=()) -> float:
        """Run a few steps of every strategy `mode="auto"` may pick (with `tree_nodes`: auto's draft
        trees too, at the shapes auto runs them), and of diffusion, at the default block size: Triton
        kernels compile and autotune for these shapes (and graphs are captured once) before a user
        waits on them. `batch_sizes`: the batched decoder's sizes (trikern.batch) whose step costs
        the profile lacks are measured too, as `trikern tune --decode --batch-sizes` would. Returns
        the seconds it took (`warmup_s`)."""
        from .decode import AUTO, candidates  # noqa: PLC0415
        from .decode.registry import STRATEGIES  # noqa: PLC0415

        t0 = time.perf_counter()
        B = block_size or self.cfg.block_size
        keys = candidates(AUTO, B, self.cfg, tree_nodes)
        if self.cfg.tri_mode and self.cfg.mask_token_id is not None:
            keys.append(("diffusion", B))
        prompt = [t % self.cfg.vocab_size for t in range(1, 18)]
        for mode, b in keys:
            kw = {} if mode == "ar" else {"block_size": b}
            cls = STRATEGIES[mode]
            if getattr(cls, "variant_of", None):  # a tree: asked for as its mode plus auto's node count
                mode, kw["tree_nodes"] = cls.variant_of, cls.nodes_for(b, tree_nodes, auto=True)
            self.generate(prompt, mode=mode, max_new_tokens=3 * b + 2, reuse_prefix=False, **kw)
        self._measure_missing_step_costs(B, batch_sizes)
        self.reset()
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def _measure_missing_step_costs(self, block_size, batch_sizes=()):
        """If auto's stored step-cost profile lacks a candidate of this device, measure them all now
        (`trikern tune --decode` at one short cache length, a few warm steps each, in turns: ~0.5 s
        for the embedded model on a 2-core CPU, ~2 s more for batch sizes 2 and 4) rather than on
        the fly in the first auto generations, where a short generation cannot win back the steps it
        spends measuring; and the same for the `batch_sizes` (> 1) the profile lacks, over that many
        sequences at once."""
        from .decode import AUTO, candidates  # noqa: PLC0415
        from .decode.auto.profile import StepProfile  # noqa: PLC0415
        from .decode.auto.tuning import measure, measure_batch  # noqa: PLC0415

        if not StepProfile.enabled():
            return
        profile, keys = StepProfile(self.model, 0), candidates(AUTO, block_size, self.cfg)
        if any(profile.get(k) is None for k in keys):
            measure(self.model, cache_lengths=(64,), steps=3, block_size=block_size, log=lambda *a, **k: None)
        missing = [n for n in batch_sizes if n > 1 and any(n not in profile.batch_seconds(k) for k in keys)]
        if missing:
            measure_batch(self.model, missing, block_size=block_size, log=lambda *a, **k: None)

    def make_prompt_cache(self) -> PromptCache:
        """An empty prefix cache for this model: pass it as `prompt_cache=` to generate / stream /
        chat, one per conversation (each request reuses the longest prefix it shares, then holds
        that request's prompt + output)."""
        w = self.model.embed_tokens.weight
        return PromptCache(self.cfg, w.dtype, w.device)

    # -- settings -----------------------------------------------------------------------
    def _eos_ids(self) -> tuple[int, ...]:
        ids = set(self.cfg.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_token_ids)
        return tuple(sorted(ids))

    def _gen_config(self, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0, seed=None, block_size=None,
                    threshold=0.9, draft_lora=True, thinking_budget=None, cuda_graphs=None, tree_nodes=None,
                    **unknown) -> GenerationConfig:
        if unknown:
            raise TypeError(f"unknown generation option(s) {', '.join(map(repr, unknown))}: expected "
                            f"{', '.join(OPTIONS)}")
        end_think = None
        if thinking_budget is not None and self.tokenizer is not None:
            end_think = self.tokenizer.token_id("</think>")
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed, block_size=block_size, threshold=threshold, draft_lora=draft_lora,
                               stop_token_ids=self._eos_ids(), thinking_budget=thinking_budget,
                               end_think_id=end_think, cuda_graphs=cuda_graphs, tree_nodes=tree_nodes)
        gen.validate()
        return gen

    def _encode(self, prompt) -> list[int]:
        """Text, or a 1-D sequence of token ids (list, tuple, range, 1-D integer tensor / array)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"prompt is text but {self.path} has no tokenizer.json: pass token ids")
            from .tokenizer import check_text  # noqa: PLC0415

            return self.tokenizer.encode(check_text(prompt, "prompt"), add_special_tokens=True)
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            # bytes iterate as ints: without this check they would be read as token ids
            raise ValueError(f"prompt is {type(prompt).__name__}: pass text (e.g. prompt.decode('utf-8')) "
                             f"or a list of token ids")
        if hasattr(prompt, "tolist") and hasattr(prompt, "ndim"):  # torch tensor, numpy array
            if prompt.ndim != 1:
                raise ValueError(f"prompt is a {prompt.ndim}-D {type(prompt).__name__}: expected a 1-D sequence "
                                 f"of token ids (batch size 1)")
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple, range)):
            raise ValueError(f"prompt is {type(prompt).__name__}: expected text (str) or a list of token ids")
        V = self.cfg.vocab_size
        for i, t in enumerate(prompt):
            if not is_int(t) or not 0 <= t < V:
                raise ValueError(f"prompt token ids[{i}] = {t!r}: not an int in [0, {V})")
        return [int(t) for t in prompt]

    # -- generation ---------------------------------------------------------------------
    def check_options(self, mode="ar", stop=None, **kw) -> GenerationConfig:
        """Check generation options without a prompt (e.g. before a chat session starts): one
        ValueError naming the bad one. Limits that depend on the prompt length are checked per request."""
        gen, _ = self._check(mode, stop, kw)
        if mode == "spec-quadratic":  # its memory; auto's candidates are checked per request
            dtype = self.model.embed_tokens.weight.dtype
            B = gen.block_size or self.cfg.block_size
            if gen.tree_nodes is None:
                check_block_size(self.cfg, B, mode, dtype.itemsize)
            else:  # a draft tree: N(B+1) rows
                tree = TREE_VARIANTS[mode]
                check_block_size(self.cfg, B, tree.mode, dtype.itemsize,
                                 nodes=tree.nodes_for(B, gen.tree_nodes, auto=False))
        return gen

    def _check(self, mode, stop, kw):
        """(validated GenerationConfig, StopStrings or None) for a request's options."""
        from .tokenizer import StopStrings  # noqa: PLC0415

        check_mode(mode, self.cfg)
        gen = self._gen_config(**kw)
        check_tree_nodes(mode, gen.tree_nodes)
        if gen.block_size is not None:
            check_block_range(self.cfg, gen.block_size)  # in every mode, AR and auto included
        stops = None
        if stop is not None:
            stops = StopStrings(stop)  # its errors name stop / stop[i]
            if self.tokenizer is None and stops.stops:
                raise ValueError(f"stop={stop!r}: stop strings need text, and {self.path} has no tokenizer.json")
            if not stops.stops:
                stops = None
        return gen, stops

    def _start(self, prompt, mode, stop, kw):
        """Check the whole request and size the decode (one error naming the bad parameter, before
        any forward); returns what `_pieces` runs."""
        reuse_prefix = kw.pop("reuse_prefix", True)
        if not isinstance(reuse_prefix, bool):
            raise ValueError(f"reuse_prefix={reuse_prefix!r}: expected True or False")
        pc = kw.pop("prompt_cache", None)
        if pc is None:
            pc = self.prompt_cache
        elif not isinstance(pc, PromptCache):
            raise ValueError(f"prompt_cache={pc!r}: expected a PromptCache (Model.make_prompt_cache()) or None")
        else:
            w = self.model.embed_tokens.weight
            pc.check(self.cfg, w.dtype, w.device)
        gen, stops = self._check(mode, stop, kw)
        ids = self._encode(prompt)
        reuse = pc.prefix(ids) if reuse_prefix else None
        ctx = new_context(self.model, gen, len(ids), mode, reuse=reuse)  # block size, context, then the cache
        pc.reset()  # its cache is the new generation's now; the generation puts prompt + output back
        return ctx, mode, ids, stops, pc

    def reset(self):
        """Forget the default prompt cache (frees its memory; the next prompt is prefilled whole)."""
        self.prompt_cache.reset()

    def _pieces(self, ctx, mode, ids, stops, pc: PromptCache, should_stop, out: list) -> Iterator[str]:
        """Text pieces, after one priming "" (see Stream); the result goes to out[0] when the
        generation ends, also when the consumer closes it; the cache goes back into `pc` when it
        ends between steps."""
        from .decode import decode as run_decoder  # noqa: PLC0415

        device = self.model.embed_tokens.weight.device
        prompt_ids = torch.tensor(ids, dtype=torch.long, device=device)
        text = TextEmitter(self.tokenizer, ids, ctx.gen.stop_token_ids, stops)
        steps = run_decoder(ctx, prompt_ids, mode)
        intact = False  # the cache matches prompt + output: stopped at a yield, not inside a step
        closed = False  # the consumer closed the stream: the result is still made, nothing more yielded
        try:
            yield ""  # primed by Stream: nothing has run yet
            for chunk in steps:
                if should_stop is not None and should_stop():  # between steps: the cache stays usable
                    text.cancel()
                    break
                piece = text.feed(chunk)
                if piece:
                    yield piece
                if text.stopped:
                    break
            intact = True
        except GeneratorExit:  # the consumer stopped reading (a client left): between steps
            intact = closed = True
            text.cancel()
        finally:
            steps.close()
            if intact:  # keep the cache for the next request: its first `length` entries are prompt + output
                pc.keep(ctx.cache, ids + text.token_ids)
        tail = text.flush()
        if tail and not closed:
            try:
                yield tail
            except GeneratorExit:  # closed after its last piece: it finished all the same
                pass
        stats = {**ctx.stats.as_dict(), "dtype": str(self.model.embed_tokens.weight.dtype).removeprefix("torch."),
                 "dtype_reason": self.dtype_reason}
        out[0] = text.result(stats)

    def stream(self, prompt, mode="ar", stop: Sequence[str] | None = None, should_stop=None, **kw) -> Stream:
        """A `Stream` of text pieces as tokens are committed (multi-byte characters are never split),
        whose `.result` is the GenerationResult once it ends. The request is checked here, so a bad
        option raises at the call, not at the first piece. `prompt_cache`: see `generate`."""
        if should_stop is not None and not callable(should_stop):
            raise ValueError(f"should_stop={should_stop!r}: expected a callable (checked after every decode step)")
        started = self._start(prompt, mode, stop, kw)
        return Stream(lambda out: self._pieces(*started, should_stop, out))

    def generate(self, prompt, mode="ar", stop: Sequence[str] | None = None, **kw) -> GenerationResult:
        """`prompt`: raw text (no chat template) or a list of token ids. `prompt_cache`: a PromptCache
        (make_prompt_cache()) to reuse and update instead of the model's own `prompt_cache`."""
        s = self.stream(prompt, mode, stop, **kw)
        for _ in s:
            pass
        return s.result

    def chat_prompt(self, messages, add_generation_prompt=True, **template_kw) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer: chat needs tokenizer.json and a chat template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **template_kw)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _chat_ids(self, messages, template_kwargs) -> list[int]:
        from .tokenizer import check_texts  # noqa: PLC0415

        if template_kwargs is not None and not isinstance(template_kwargs, dict):
            raise ValueError(f"template_kwargs={template_kwargs!r}: expected a dict of template variables")
        check_texts(template_kwargs, "template_kwargs")  # text that is not UTF-8: one error naming the field
        return self.chat_prompt(messages, **(template_kwargs or {}))  # messages[i] errors: tokenizer

    def chat(self, messages, mode="ar", stop=None, template_kwargs=None, **kw) -> GenerationResult:
        return self.generate(self._chat_ids(messages, template_kwargs), mode, stop, **kw)

    def chat_stream(self, messages, mode="ar", stop=None, template_kwargs=None, should_stop=None,
                    **kw) -> Stream:
        return self.stream(self._chat_ids(messages, template_kwargs), mode, stop, should_stop, **kw)
