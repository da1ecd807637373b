"""Weight bytes and peak load memory of quantized models: computed for a config's full shape, and
measured by loading a checkpoint quantized while it loads (`load(path, quantize="int4"|"fp8")`).

Computed (trikern/quant/sizes.py; no memory needed, any shape, NLD-8B by default): per format the
model's bytes all told, the layer linears, the 16-bit embedding and head, the bytes a T = 1 forward
reads (the embedding only gathered), and the load-peak estimate (quantized model + the largest
16-bit linear read to be quantized).

Measured: writes a synthetic bf16 checkpoint with the real tensor names (random weights), sharded one
layer per file as large checkpoints are, then loads it in a fresh child process per case:
  model MB   bytes of the loaded model's parameters and buffers (the quantized linears' packed
             weights, scales and zero points included), beside the computed figure
  peak MB    the most anonymous memory (RssAnon) the child held during the load, less what it held
             just before (imports, torch) -- sampled every 2 ms by a thread -- plus the model's
             bytes that stay memory-mapped from the file (on the CPU, a tensor read in the file's
             dtype is a view of the file's pages: the 16-bit embedding and head here; counted as
             the model bytes that anonymous memory does not hold at the end, column "mapped").
             On CUDA (--device cuda): torch.cuda.max_memory_allocated instead.
  extra MB   peak - model: what the load needed beyond the result (the goal: about one 16-bit tensor)
Other file pages of the memory-mapped safetensors (the 16-bit linears read to be quantized) are not
counted: the page cache, dropped as needed.

    python benchmarks/bench_quant_load.py --sizes-only                    # computed figures, NLD-8B
    python benchmarks/bench_quant_load.py --config nld-8b --cases int4,fp8   # the full 8B shape (17 GB file)
    python benchmarks/bench_quant_load.py --config nld-8b --layers 4         # its layers, fewer of them
    python benchmarks/bench_quant_load.py [--layers 8 --hidden 2048 --intermediate 5632]  # a small shape
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, threading, time, torch
from trikern.loading import load_model
path, device, quantize = sys.argv[1], sys.argv[2], (sys.argv[3] if sys.argv[3] != "none" else None)
group = int(sys.argv[4])
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
base = anon()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = threading.Thread(target=sample); t.start()
t0 = time.perf_counter()
m = load_model(path, device=device, dtype="bf16", quantize=quantize, group_size=group, lora=False, progress=False)
secs = time.perf_counter() - t0
stop[0] = True; t.join()
end = anon()
model = sum(x.numel() * x.element_size() for n, x in list(m.named_parameters()) + list(m.named_buffers())
            if n != "inv_freq")
if device == "cuda":
    used, mapped = torch.cuda.max_memory_allocated(), 0
else:
    # Tensors read in the file's dtype on the CPU stay views of the memory-mapped file (the page
    # cache, not RssAnon): the model bytes that anonymous memory does not hold at the end are those.
    mapped = max(0, model - (end - base))
    used = peak[0] - base + mapped
print(json.dumps({"model": model, "peak": used, "mapped": mapped, "peak_anon": peak[0] - base,
                  "end_anon": end - base, "seconds": secs}))
"""

SHAPES = {"self_attn.q_proj": ("q", "H"), "self_attn.k_proj": ("kv", "H"), "self_attn.v_proj": ("kv", "H"),
          "self_attn.o_proj": ("H", "q"), "mlp.gate_proj": ("I", "H"), "mlp.up_proj": ("I", "H"),
          "mlp.down_proj": ("H", "I")}


def small_config(layers: int, hidden: int, inter: int) -> dict:
    return {"model_type": "nemotron_labs_diffusion", "vocab_size": 4096, "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": hidden // 128,
            "num_key_value_heads": max(1, hidden // 512), "head_dim": 128, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "mask_token_id": 3, "eos_token_id": 2,
            "rope_theta": 10000.0}


def write_checkpoint(folder: Path, cfg: dict) -> int:
    """A bf16 checkpoint of `cfg` with the NLD tensor names, one shard per layer (plus one for the
    embedding, norm and head) and the index; returns the largest layer weight's bytes. Random
    values (N(0, 0.02)), a layer at a time: writing never holds more than one shard."""
    import torch
    from safetensors.torch import save_file

    H, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    dims = {"H": H, "I": I, "q": cfg["num_attention_heads"] * cfg["head_dim"],
            "kv": cfg["num_key_value_heads"] * cfg["head_dim"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.empty(*shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=g)

    weight_map = {}

    def shard(name: str, tensors: dict):
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))

    shard("embed-head.safetensors", {"encoder.embed_tokens.weight": w(V, H), "diffusion_head.weight": w(V, H),
                                     "encoder.norm.weight": torch.ones(H, dtype=torch.bfloat16)})
    for i in range(L):
        t = {f"encoder.layers.{i}.{n}.weight": w(dims[a], dims[b]) for n, (a, b) in SHAPES.items()}
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"encoder.layers.{i}.{n}.weight"] = torch.ones(H, dtype=torch.bfloat16)
        shard(f"layer-{i:03d}.safetensors", t)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return max(dims[a] * dims[b] for a, b in SHAPES.values()) * 2


CASES = {"bf16": ("none", 128, "sym"), "int4": ("int4", 128, "sym"), "int4-asym": ("int4", 128, "asym"),
         "int4-g64": ("int4", 64, "sym"), "int4-g32": ("int4", 32, "sym"), "fp8": ("fp8", 128, "sym")}


def spec_of(case: str):
    from trikern.quant import Spec

    q, group, sym = CASES[case]
    return None if q == "none" else Spec(q, group, sym == "sym")


def print_sizes(name: str, cfg) -> dict:
    from trikern.quant.sizes import sizes

    print(f"computed ({name}: {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, vocab {cfg.vocab_size}, "
          f"{'tied' if cfg.tie_word_embeddings else 'untied'} head; bf16 model dtype; GB = 1e9 bytes)")
    print(f"{'weights':<11}{'total GB':>9}{'linears':>9}{'emb+head':>9}{'read/fwd':>9}{'load peak':>10}")
    out = {}
    for case in CASES:
        s = out[case] = sizes(cfg, spec_of(case))
        print(f"{case:<11}{s['total'] / 1e9:>9.3f}{s['linears'] / 1e9:>9.3f}{(s['embedding'] + s['head']) / 1e9:>9.3f}"
              f"{s['read_per_token'] / 1e9:>9.3f}{s['load_peak'] / 1e9:>10.3f}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a shipped config name (nld-8b, ...) or config.json: its full shape "
                   "(--layers cuts it); default: a small NLD shape from --layers / --hidden / --intermediate")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--cases", default="bf16,int4,fp8", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--sizes-only", action="store_true", help="print the computed figures (of --config, default "
                   "nld-8b) and stop")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from trikern.config import ModelConfig
    from trikern.configs import load_config

    cases = [c.strip() for c in a.cases.split(",")]
    bad = [c for c in cases if c not in CASES or CASES[c][2] != "sym"]
    if bad:  # load(quantize=) quantizes symmetrically; asymmetric int4 is computed only
        p.error(f"--cases: {bad[0]!r} cannot be measured (expected some of "
                f"{', '.join(c for c in CASES if CASES[c][2] == 'sym')})")
    if a.config or a.sizes_only:
        name = a.config or "nld-8b"
        raw = dict(load_config(name).raw)
        if a.layers:
            raw["num_hidden_layers"] = a.layers
    else:
        name, raw = "small NLD shape", small_config(a.layers or 8, a.hidden, a.intermediate)
    cfg = ModelConfig.from_dict(raw, name)
    res = {"config": name, "computed": print_sizes(name, cfg), "measured": {}}
    if not a.sizes_only:
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            t0 = time.perf_counter()
            largest = write_checkpoint(folder, raw)
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            print(f"\nmeasured: checkpoint {size / 1e9:.2f} GB bf16 ({cfg.num_hidden_layers} layers, written in "
                  f"{time.perf_counter() - t0:.0f} s); largest linear {largest / 2**20:.1f} MiB bf16; device {a.device}")
            print(f"{'load':<11}{'model MiB':>10}{'computed':>10}{'mapped':>8}{'peak MiB':>10}{'extra MiB':>10}"
                  f"{'seconds':>9}")
            for case in cases:
                q, group, _ = CASES[case]
                r = subprocess.run([sys.executable, "-c", CHILD, str(folder), a.device, q, str(group)],
                                   capture_output=True, text=True)
                if r.returncode:
                    print(f"{case}: the load failed (exit {r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
                    return 1
                m = json.loads(r.stdout.strip().splitlines()[-1])
                m["computed"] = res["computed"][case]["total"]
                res["measured"][case] = m
                mib = {k: m[k] / 2**20 for k in ("model", "peak", "computed", "mapped")}
                print(f"{case:<11}{mib['model']:>10.0f}{mib['computed']:>10.0f}{mib['mapped']:>8.0f}{mib['peak']:>10.0f}"
                      f"{mib['peak'] - mib['model']:>10.0f}{m['seconds']:>9.1f}", flush=True)
    if a.json:
        from trikern.files import write_json
        write_json(a.json, res, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
