"""The batched steps: one step of one mode at one block size for every decoding sequence of the
batch, with the prefill chunks of joining sequences riding in its causal pass (spec-quadratic has
none: they get a causal pass of their own in that step).

Each step is the single-sequence mode's step (decode/strategies/ar.py, spec_linear.py,
spec_quadratic.py) done for all sequences by one forward per pass (trikern/batch/forward.py); what
is per sequence -- sampling
with its own generator, verify's accepted prefix, the commit -- stays per sequence, with the same
RNG draws in the same order as a solo run, so a seed gives the same text batched as solo.

`run(decoding, prefill)` takes the decoding sequences and (sequence, chunk length) prefill pieces
and returns {sequence: tokens produced} (a prefilling sequence gets its first token when its chunk
ends its prompt), after committing every written entry it keeps (device lengths and host copies)
and reading the produced tokens to the host once.
"""
from __future__ import annotations

import torch

from .. import kernels as K
from ..decode.strategies.device import draw_drafts, produced, verifier_inputs, without_mask
from ..sampling import probs, sample
from .forward import forward_batch, last_rows, layout


class BatchStep:
    mode = ""
    speculative = False  # its steps verify drafts (their acceptance lengths are recorded, as solo)

    def __init__(self, dec, B: int):
        self.dec, self.B = dec, B
        self.forwards = 1 if B == 1 else 2  # per decoding sequence and step

    @staticmethod
    def scratch(B: int) -> int:
        """Region slots past the committed length one step writes."""
        return B

    def admit(self, seq):
        """A sequence got its region: the causal prefill feeds its whole prompt (the last position's
        logits give its first token)."""
        seq.prefill_len = len(seq.prompt)

    def restart(self, seq, pending: torch.Tensor):
        """The state after a forced token (thinking budget): `pending` [1] emitted, not in the cache."""
        seq.pending = pending

    def drained(self):
        """The batch has emptied (every sequence left): a kind that learnt something persists it."""

    def prompt_chunk(self, seq, T) -> torch.Tensor:
        return torch.tensor(seq.prompt[seq.fed:seq.fed + T], dtype=torch.long, device=self.dec.device)

    def first_tokens(self, prefill, logits) -> list[tuple[object, torch.Tensor]]:
        """(sequence, its first token [1]) for every prefill piece that ends its prompt; `logits`:
        the last row of each piece, in order."""
        out = []
        for i, (s, T) in enumerate(prefill):
            if s.fed + T == len(s.prompt):
                g = s.gen
                out.append((s, sample(logits[i:i + 1], g.temperature, g.top_k, g.top_p, s.generator)))
        return out

    def commit(self, counts):
        """Advance each sequence's region by its count (device lengths, host copy; prefill: `fed`)."""
        dec = self.dec
        if not counts:
            return
        slots = torch.tensor([s.slot for s, _ in counts], device=dec.device)
        dec.cache.lengths.index_add_(0, slots, torch.tensor([c for _, c in counts], device=dec.device))
        for s, c in counts:
            s.length += c
            if s.fed < s.prefill_len:
                s.fed += c


class ARBatch(BatchStep):
    """One causal pass: each decoding sequence's pending token and each prefill chunk."""
    mode = "ar"

    @staticmethod
    def scratch(B: int) -> int:
        return 1

    def run(self, decoding, prefill):
        dec = self.dec
        pieces = [(s, 1) for s in decoding] + list(prefill)
        toks = [s.pending for s in decoding] + [self.prompt_chunk(s, T) for s, T in prefill]
        if dec.graphs is not None and not prefill:
            logits = dec.graphs("ar", torch.cat(toks), [s.slot for s in decoding], [0], (0, 1), K.CAUSAL,
                                write_cache=True)
        else:
            segs = layout(dec.cache, [(s.slot, s.length, T) for s, T in pieces])
            logits = forward_batch(dec.model, torch.cat(toks), dec.cache, segs, K.CAUSAL, write_cache=True,
                                   logits_index=last_rows(segs, dec.device))
        D = len(decoding)
        firsts = self.first_tokens(prefill, logits[D:])
        nxt = _sample_rows(decoding, logits[:D])
        self.commit(pieces)
        host = torch.cat([nxt] + [t for _, t in firsts]).tolist()  # the step's one host read
        out = {s: [host[i]] for i, s in enumerate(decoding)}
        out.update({s: [host[D + i]] for i, (s, _) in enumerate(firsts)})
        return out


class LinearSpecBatch(BatchStep):
    """A bidirectional draft pass over every decoding sequence's [pending, M x (B-1)], then one causal
    verify pass over their chains [pending, drafts] and the prefill chunks; kernels.verify per
    sequence decides its own accepted prefix, and each region commits pending + accepted."""
    mode = "spec-linear"
    speculative = True

    def __init__(self, dec, B):
        super().__init__(dec, B)
        self.mask_id, self.mask_index = self.mask_of(dec, self.mode)

    @staticmethod
    def mask_of(dec, mode) -> tuple[int, torch.Tensor]:
        """(mask id, the same as a [1] int64 device tensor)."""
        m = dec.cfg.mask_token_id
        if m is None:
            raise ValueError(f"mode={mode!r} needs a mask token: {dec.cfg.model_type} config has no mask_token_id")
        return int(m), torch.tensor([int(m)], device=dec.device)

    def draft(self, decoding):
        """[(drafts [B-1], q [B-1, V] or None)] per decoding sequence."""
        dec, B, V = self.dec, self.B, self.dec.cfg.vocab_size
        if B == 1:  # nothing to draft (the step is one AR forward); q an empty [0, V] under sampling
            return [(s.pending.new_empty(0), None if s.gen.temperature <= 0 else
                     torch.empty(0, V, device=dec.device)) for s in decoding]
        masks = self.mask_index.expand(B - 1)
        toks = torch.cat([t for s in decoding for t in (s.pending, masks)])
        if dec.graphs is not None:
            logits = dec.graphs("spec-linear-draft", toks, [s.slot for s in decoding], list(range(B)), (1, B),
                                K.BIDIRECTIONAL, lora=dec.draft_lora)
        else:
            segs = layout(dec.cache, [(s.slot, s.length, B) for s in decoding])
            rows = torch.tensor([segs.starts[b] + j for b in range(segs.count) for j in range(1, B)],
                                device=dec.device)
            logits = forward_batch(dec.model, toks, dec.cache, segs, K.BIDIRECTIONAL, lora=dec.draft_lora,
                                   logits_index=rows)
        logits = without_mask(logits, self.mask_index).view(len(decoding), B - 1, -1)
        return [draw_drafts(s, logits[i]) for i, s in enumerate(decoding)]

    def run(self, decoding, prefill):
        dec, B = self.dec, self.B
        drafts = self.draft(decoding) if decoding else []
        toks = [torch.cat([s.pending, d]) for s, (d, _) in zip(decoding, drafts)]
        toks += [self.prompt_chunk(s, T) for s, T in prefill]
        pieces = [(s, B) for s in decoding] + list(prefill)
        D = len(decoding)
        if dec.graphs is not None and not prefill:
            logits = dec.graphs("spec-linear-verify", torch.cat(toks), [s.slot for s in decoding], list(range(B)),
                                (0, B), K.CAUSAL, write_cache=True)
        else:
            segs = layout(dec.cache, [(s.slot, s.length, T) for s, T in pieces])
            rows = [segs.starts[b] + j for b in range(D) for j in range(B)]  # every row of a chain
            rows += [segs.starts[b + 1] - 1 for b in range(D, segs.count)]  # the last of a prefill chunk
            logits = forward_batch(dec.model, torch.cat(toks), dec.cache, segs, K.CAUSAL, write_cache=True,
                                   logits_index=torch.tensor(rows, device=dec.device))
        verified = []
        for i, (s, (d, q)) in enumerate(zip(decoding, drafts)):
            target, u, e = verifier_inputs(s, logits[i * B:(i + 1) * B], B - 1)
            verified.append(K.verify(d, target, q, u, e, backend=dec.model.backend)[0])
        firsts = self.first_tokens(prefill, logits[D * B:])
        made = verified + [t for _, t in firsts]
        host = torch.cat(made).tolist() if made else []  # the step's one host read
        out = {s: produced(host[i * B:(i + 1) * B]) for i, s in enumerate(decoding)}
        out.update({s: [host[D * B + i]] for i, (s, _) in enumerate(firsts)})
        # The region keeps pending + the accepted drafts: exactly AR's entries (stride 1: in place).
        self.commit([(s, len(out[s])) for s in decoding] + list(prefill))
        return out


class QuadraticSpecBatch(BatchStep):
    """One QUADRATIC pass over every decoding sequence's A sub-blocks `[d_i, M x B]` (W = B + 1 wide,
    d_i at n + i), as decode/strategies/spec_quadratic.py does for one: kernels.verify per sequence on
    its anchors' logits (stride W: it compacts the accepted K/V in the sequence's region and advances
    its length), and the next draft from the masks of the sub-block each one's verdict picks. The
    prefill feeds all of a prompt but its last token causally (a pass of its own: QUADRATIC cannot
    hold a causal chunk), then the sequence starts from the A = 1 draft `[p_last]` in the same step."""
    mode = "spec-quadratic"
    speculative = True

    def __init__(self, dec, B):
        super().__init__(dec, B)
        self.width, self.forwards = B + 1, 1
        self.mask_id, self.mask_index = LinearSpecBatch.mask_of(dec, self.mode)

    @staticmethod
    def scratch(B: int) -> int:
        return B * (B + 1)

    def admit(self, seq):
        seq.prefill_len = len(seq.prompt) - 1
        if seq.prefill_len == 0:
            self.restart(seq, torch.tensor(seq.prompt[-1:], device=self.dec.device))

    def restart(self, seq, pending):
        """A = 1: only d_0 (no drafts yet), q an empty [0, V] under sampling."""
        seq.pending = seq.draft = pending.reshape(1)
        seq.q = None if seq.gen.temperature <= 0 else torch.empty(0, self.dec.cfg.vocab_size, device=self.dec.device)

    def run(self, decoding, prefill):
        dec, W, be = self.dec, self.width, self.dec.model.backend
        if prefill:  # no logits needed: the first token comes from the A = 1 step
            segs = layout(dec.cache, [(s.slot, s.length, T) for s, T in prefill])
            forward_batch(dec.model, torch.cat([self.prompt_chunk(s, T) for s, T in prefill]), dec.cache, segs,
                          K.CAUSAL, write_cache=True, return_hidden=True)
            self.commit(prefill)
            joined = [s for s, _ in prefill if s.fed == s.prefill_len]
            for s in joined:
                self.restart(s, torch.tensor(s.prompt[-1:], device=dec.device))
            decoding = decoding + joined
        if not decoding:
            return {}
        pieces = [K.draft_tree(s.draft, s.length, W, self.mask_id, backend=be) for s in decoding]
        sizes = [s.draft.shape[0] for s in decoding]
        starts = [sum(sizes[:b]) * W for b in range(len(sizes))]
        toks = torch.cat([t for t, _ in pieces])
        if dec.graphs is not None and all(A == self.B for A in sizes):  # no restarted (shorter) draft
            # d_i at n + i, its masks at n + i + 1 .. n + i + B: row (i, t) sits at n + i + t
            hidden = dec.graphs("spec-quadratic", toks, [s.slot for s in decoding],
                                [i + t for i in range(self.B) for t in range(W)], None, K.QUADRATIC, sub_block=W,
                                write_cache=True)
        else:
            segs = layout(dec.cache, [(s.slot, s.length, t.shape[0]) for s, (t, _) in zip(decoding, pieces)])
            hidden = forward_batch(dec.model, toks, dec.cache, segs, K.QUADRATIC, sub_block=W, write_cache=True,
                                   pos=torch.cat([p for _, p in pieces]), return_hidden=True)
        anchors = torch.tensor([starts[b] + i * W for b, A in enumerate(sizes) for i in range(A)], device=dec.device)
        target_all = dec.model.logits(hidden[anchors]).split(sizes)
        verdicts, picks = [], []
        for b, s in enumerate(decoding):
            target, u, e = verifier_inputs(s, target_all[b], sizes[b] - 1)
            view = dec.cache.view(s.slot)
            out, count = K.verify(s.draft[1:], target, s.q, u, e, view.k, view.v, view.length, stride=W, backend=be)
            c = (count - 1).reshape(1)
            verdicts.append((out, out.gather(0, c)))
            picks.append(starts[b] + c * W + torch.arange(2, W, device=dec.device))  # offsets 2 .. B of sub-block c
        masks = dec.model.logits(hidden[torch.cat(picks)])
        masks = without_mask(masks, self.mask_index).view(len(decoding), W - 2, dec.cfg.vocab_size)
        for b, s in enumerate(decoding):
            nxt, s.q = draw_drafts(s, masks[b])
            s.draft = torch.cat([verdicts[b][1], nxt])
        host = torch.cat([out for out, _ in verdicts]).tolist()  # the step's one host read
        out, at = {}, 0
        for s, A in zip(decoding, sizes):
            out[s] = produced(host[at:at + A])
            at += A
            s.length += len(out[s])  # the device length: advanced by kernels.verify
        return out


class DiffusionBatch(BatchStep):
    """Block diffusion (decode/strategies/diffusion.py) for every decoding sequence: bidirectional
    denoise passes over the blocks `[pending, M x (B-1)]` of the sequences that still have masks
    they can emit (each sequence stops as its solo run would, so it makes the same passes and RNG
    draws), each revealed per sequence by kernels.reveal; then one causal pass that commits every
    block not ending its generation, the prefill chunks riding in it. Not lossless, as solo."""
    mode = "diffusion"

    def __init__(self, dec, B):
        super().__init__(dec, B)
        self.mask_id, self.mask_index = LinearSpecBatch.mask_of(dec, self.mode)
        self.forwards = 0  # counted per sequence in `run` (passes vary)

    def first_tokens(self, prefill, logits):
        return super().first_tokens(prefill, without_mask(logits, self.mask_index))

    def denoise(self, live, blocks):
        """One bidirectional pass over the blocks of `live`, revealed per sequence (in place in `blocks`)."""
        dec, B = self.dec, self.B
        toks = torch.cat([blocks[s][0] for s in live])
        if dec.graphs is not None:  # the block sits at n .. n+B-1, where a graphed pass puts it
            logits = dec.graphs("diffusion-denoise", toks, [s.slot for s in live], list(range(B)), (0, B),
                                K.BIDIRECTIONAL)
        else:
            segs = layout(dec.cache, [(s.slot, s.length, B) for s in live])
            pos = torch.cat([blocks[s][2] for s in live])
            logits = forward_batch(dec.model, toks, dec.cache, segs, K.BIDIRECTIONAL, pos=pos)
        logits = without_mask(logits, self.mask_index).view(len(live), B, -1)
        for i, s in enumerate(live):
            g, (tokens, masked, p_) = s.gen, blocks[s]
            p = noise = None
            if g.temperature > 0:
                p = probs(logits[i], g.temperature, g.top_k, g.top_p)
                noise = torch.empty_like(p).exponential_(1.0, generator=s.generator)
            tokens, masked = K.reveal(tokens, masked, logits[i], g.threshold, self.mask_id, p, noise,
                                      backend=dec.model.backend)
            blocks[s] = (tokens, masked, p_)

    def run(self, decoding, prefill):
        dec, B = self.dec, self.B
        blocks, needed, host, passes = {}, {}, {}, {}
        for s in decoding:
            tokens, pos = K.draft_tree(s.pending, s.length, B, self.mask_id, backend=dec.model.backend)
            blocks[s] = (tokens, torch.arange(B, device=dec.device) > 0, pos)
            # A revealed token never changes: stop once the positions the budget can emit are revealed.
            needed[s], passes[s], host[s] = min(B, 1 + s.emitter.room), 0, []
        live = list(decoding)
        for _ in range(B - 1):
            if not live:
                break
            self.denoise(live, blocks)
            reads = torch.cat([torch.cat([blocks[s][0], blocks[s][1].long()]) for s in live]).tolist()  # one read
            for i, s in enumerate(live):
                host[s], passes[s] = reads[i * 2 * B:(i + 1) * 2 * B], passes[s] + 1
            live = [s for s in live if any(host[s][B:B + needed[s]])]
        out, commit = {}, []
        for s in decoding:
            filled = host[s][1:B] if B > 1 else []
            if any(host[s][B:]) or s.emitter.ends(filled):  # the generation ends in this block: no commit
                out[s] = filled[:needed[s] - 1]
            else:
                out[s] = filled
                commit.append(s)
            s.stats.forwards += passes[s] + (s in commit)
        if commit or prefill:
            toks = [blocks[s][0] for s in commit] + [self.prompt_chunk(p, T) for p, T in prefill]
            segs = layout(dec.cache, [(s.slot, s.length, B) for s in commit] + [(p.slot, p.length, T) for p, T in prefill])
            pos = torch.cat([blocks[s][2] for s in commit] + [torch.arange(p.length, p.length + T, device=dec.device)
                                                              for p, T in prefill])
            logits = forward_batch(dec.model, torch.cat(toks), dec.cache, segs, K.CAUSAL, write_cache=True, pos=pos,
                                   logits_index=last_rows(segs, dec.device))
            D = len(commit)
            nxt = _sample_rows(commit, without_mask(logits[:D], self.mask_index))
            firsts = self.first_tokens(prefill, logits[D:])
            self.commit([(s, B) for s in commit] + list(prefill))
            made = torch.cat([nxt] + [t for _, t in firsts]).tolist()  # the step's last host read
            for i, s in enumerate(commit):
                out[s] = out[s] + [made[i]]
            out.update({p: [made[D + i]] for i, (p, _) in enumerate(firsts)})
        return out


def _sample_rows(seqs, logits) -> torch.Tensor:
    """The next token [len(seqs)] of each sequence from its logits row, each with its own settings and
    generator (the draws a solo run makes); all-greedy batches take one argmax."""
    if all(s.gen.temperature <= 0 for s in seqs):
        return torch.argmax(logits, dim=-1)
    return torch.cat([sample(logits[i:i + 1], s.gen.temperature, s.gen.top_k, s.gen.top_p, s.generator)
                      for i, s in enumerate(seqs)]) if seqs else logits.new_empty(0, dtype=torch.long)


STEPS = {cls.mode: cls for cls in (ARBatch, DiffusionBatch, LinearSpecBatch, QuadraticSpecBatch)}
