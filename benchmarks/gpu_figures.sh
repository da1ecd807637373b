#!/usr/bin/env bash
# The GPU checks and figures issues 22 and 25 still lack, as one run of at most 6 minutes on an H100 or
# H200 (a lent device's session has 15 minutes, the machine's start included):
#   1. `trikern selfcheck --only graphs,lossless`: captured batch graphs replay what eager batches
#      compute (graphs/batch), CUDA graphs per step, spec == AR token for token;
#   2. the verify pass of a linear draft tree of N = 8 .. 64 nodes against the chain's 8-token pass,
#      NLD-8B shape, random bf16 weights (issue 25: "a 64-node verify should cost about what an
#      8-token one does");
#   3. batched decoding of the NLD-8B shape at 1, 2, 4, 8 users, CUDA graphs on, then eager
#      (issue 22's aggregate and per-user tok/s; random drafts: the speculative rows are step costs).
# Each step has its own time limit, so a slow one leaves the others' files. DRY=1 runs the same steps on
# the CPU at tiny sizes (one layer, a few tokens): a syntax and plumbing check before a GPU run.
#
#   benchmarks/gpu_figures.sh OUT_DIR        # from a checkout's root; results land in OUT_DIR (8 files)
set -u
O=$(mkdir -p "${1:?usage: gpu_figures.sh OUT_DIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRIKERN_AUTOTUNE_DIR=${TRIKERN_AUTOTUNE_DIR:-$(mktemp -d)}  # a bare machine: tune afresh, keep nothing
if [ "${DRY:-0}" = 1 ]; then
  check=(--dry-run); shape=(--layers 1 --device cpu --context 64 --reps 1 --threads 1)
  batch=(--layers 1 --device cpu --prompt-tokens 16 --max-new-tokens 4 --repeats 1 --concurrency 1,2)
else
  check=(); shape=(); batch=(--repeats 2 --max-new-tokens 32)
fi
SECONDS=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true; } > "$O/env.txt" 2>&1
cat "$O/env.txt"
timeout "${S_S:-90}" "$PY" -m trikern selfcheck "${check[@]}" --only graphs,lossless --json "$O/selfcheck.json" \
  > "$O/selfcheck.txt" 2>&1
echo "selfcheck rc=$? at ${SECONDS}s"
timeout "${T_S:-60}" "$PY" -m trikern bench --synthetic nld-8b "${shape[@]}" --widths 1,8,16,32,64 \
  --tree-nodes 8,16,32,64 --block-sizes 8 --decode-tokens 0 > "$O/tree.txt" 2>&1
echo "tree rc=$? at ${SECONDS}s"
timeout "${B_S:-150}" "$PY" benchmarks/bench_batch.py --synthetic nld-8b "${batch[@]}" \
  --modes ar,spec-linear:4,auto:8 --json "$O/batch_graphs.json" > "$O/batch_graphs.txt" 2>&1
echo "batch (graphs) rc=$? at ${SECONDS}s"
timeout "${E_S:-60}" "$PY" benchmarks/bench_batch.py --synthetic nld-8b "${batch[@]}" --no-cuda-graphs \
  --modes ar,spec-linear:4 --json "$O/batch_eager.json" > "$O/batch_eager.txt" 2>&1
echo "batch (eager) rc=$? at ${SECONDS}s"
tail -n 25 "$O/selfcheck.txt"; tail -n 8 "$O/tree.txt"; grep -h '^|\|^# auto\|^# synthetic' "$O"/batch_*.txt
