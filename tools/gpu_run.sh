#!/usr/bin/env bash
# Run GPU measurements on the lent GPU host (see tools/HELPERS.md): install the carried wheels, run the
# requested bench commands one after another (each with its own time limit, so one failure loses nothing
# else), and pack book/results/gpu plus the log into $OUT.
# Usage: bash tools/gpu_run.sh "120@zero-shot" "300@train --budget-s 280" "250@torchrun:train-dist" ...
#   N@ sets that command's time limit in seconds (default $BENCH_LIMIT or 300); torchrun: runs it under
#   torchrun with $NPROC (default 2) processes. Results are packed into $OUT after every command.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/log.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 \
  && export PYTHONPATH=/tmp/site:$PWD || { echo "wheel install failed" | tee -a "$LOG"; }
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import torch, transformers, importlib.util as u
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)
print("gpus", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print("peft", u.find_spec("peft") is not None, "evo2", u.find_spec("evo2") is not None)
try:
    from torch.nn.attention.varlen import varlen_attn; print("varlen_attn: yes")
except Exception as e: print("varlen_attn: no", e)
PY
nvidia-smi topo -m >>"$LOG" 2>&1
start=$SECONDS
for spec in "$@"; do
  limit=${BENCH_LIMIT:-300}
  if [[ $spec =~ ^([0-9]+)@(.*)$ ]]; then limit=${BASH_REMATCH[1]}; spec=${BASH_REMATCH[2]}; fi
  echo "=== [$((SECONDS-start)) s] bench $spec (limit ${limit}s)" | tee -a "$LOG"
  if [[ $spec == torchrun:* ]]; then
    timeout "$limit" torchrun --standalone --nproc_per_node="${NPROC:-2}" -m bioft_tutorial.bench ${spec#torchrun:} 2>&1 | tee -a "$LOG"
  else
    timeout "$limit" python3 -m bioft_tutorial.bench $spec 2>&1 | tee -a "$LOG"
  fi
  echo "=== exit ${PIPESTATUS[0]} after $((SECONDS-start)) s" | tee -a "$LOG"
  tar czf "$OUT/results.tgz" book/results/gpu 2>>"$LOG"
done
echo "done in $((SECONDS-start)) s" | tee -a "$LOG"
