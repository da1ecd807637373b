"""Peak memory of loading a checkpoint quantized while it loads (`load(path, quantize="int4"|"fp8")`),
against the 16-bit load and the quantized model's own bytes.

Writes a synthetic bf16 NLD-shaped checkpoint (random weights; `--layers`, `--hidden`,
`--intermediate` set its size), then loads it in a fresh child process per case and reports:
  model MB   bytes of the loaded model's parameters and buffers (the quantized linears' packed
             weights, scales and zero points included)
  peak MB    the most anonymous memory (RssAnon) the child held during the load, less what it held
             just before (imports, torch) -- sampled every 2 ms by a thread. On CUDA (--device cuda):
             torch.cuda.max_memory_allocated instead.
  extra MB   peak - model: what the load needed beyond the result; the goal is about one 16-bit tensor
             (the largest weight is printed) plus small temporaries.
File pages of the memory-mapped safetensors (RssFile) are not counted: they are the page cache.

    python benchmarks/bench_quant_load.py [--layers 8 --hidden 2048 --intermediate 5632] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time, torch
from trikern.loading import load_model
path, device, quantize = sys.argv[1], sys.argv[2], (sys.argv[3] if sys.argv[3] != "none" else None)
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
m = load_model(path, device=device, dtype="bf16", quantize=quantize, lora=False)
secs = time.perf_counter() - t0
stop[0] = True; t.join()
model = sum(x.numel() * x.element_size() for x in list(m.parameters()) + list(m.buffers()))
used = torch.cuda.max_memory_allocated() if device == "cuda" else peak[0] - base
print(json.dumps({"model": model, "peak": used, "seconds": secs}))
"""


def write_checkpoint(folder: Path, layers: int, hidden: int, inter: int) -> int:
    """A bf16 checkpoint with the NLD tensor names; returns the largest weight's bytes."""
    import torch
    from safetensors.torch import save_file

    heads, kv, hd, vocab = hidden // 128, max(1, hidden // 512), 128, 4096
    cfg = {"model_type": "nemotron_labs_diffusion", "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "head_dim": hd, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "mask_token_id": 3, "eos_token_id": 2, "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return (0.02 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    shapes = {"self_attn.q_proj": (heads * hd, hidden), "self_attn.k_proj": (kv * hd, hidden),
              "self_attn.v_proj": (kv * hd, hidden), "self_attn.o_proj": (hidden, heads * hd),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    t = {"encoder.embed_tokens.weight": w(vocab, hidden), "encoder.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
         "diffusion_head.weight": w(vocab, hidden)}
    for i in range(layers):
        for n, s in shapes.items():
            t[f"encoder.layers.{i}.{n}.weight"] = w(*s)
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"encoder.layers.{i}.{n}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    save_file(t, str(folder / "model.safetensors"))
    return max(a * b for a, b in shapes.values()) * 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        largest = write_checkpoint(folder, a.layers, a.hidden, a.intermediate)
        size = (folder / "model.safetensors").stat().st_size
        print(f"checkpoint: {size / 2**20:.0f} MB bf16 ({a.layers} layers, hidden {a.hidden}, intermediate "
              f"{a.intermediate}); largest weight {largest / 2**20:.1f} MB bf16; device {a.device}")
        print(f"{'load':<14}{'model MB':>10}{'peak MB':>10}{'extra MB':>10}{'seconds':>9}")
        for q in ("none", "int4", "fp8"):
            r = subprocess.run([sys.executable, "-c", CHILD, str(folder), a.device, q], capture_output=True,
                               text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            mb = {k: res[k] / 2**20 for k in ("model", "peak")}
            print(f"{'bf16' if q == 'none' else q:<14}{mb['model']:>10.0f}{mb['peak']:>10.0f}"
                  f"{mb['peak'] - mb['model']:>10.0f}{res['seconds']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
