#!/usr/bin/env bash
# Run benchmarks on an offline GPU machine, from the repository root, one after another, each with its own time
# limit (so that one failure loses nothing else), and pack the results into $OUT after each.
#
#   bash tools/gpu_run.sh "420@train --budget-s 400" "60@zero-shot" "100@evo2"
#   bash tools/gpu_run.sh "570@notebooks --budget-s 550"
#
# Each argument is `[LIMIT@]COMMAND [OPTIONS]` for `python -m benchmarks COMMAND [OPTIONS]` (LIMIT in seconds,
# default $BENCH_LIMIT or 300). Wheels the machine lacks are expected in ./.whl (fetched beforehand with the
# machine's fetch_wheels.sh) and are installed once into /tmp/site. $OUT receives log.txt and results.tgz:
# book/results/gpu/ plus the notebooks executed by the `notebooks` command (_build/gpu-notebooks/executed/).
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/log.txt"
if [[ ! -f /tmp/site/.bioft-installed ]] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && touch /tmp/site/.bioft-installed || echo "wheel install failed (see $LOG)" | tee -a "$LOG"
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import importlib.util as u
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)
print("gpus", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print({name: u.find_spec(name) is not None for name in ("peft", "evo2", "papermill", "pynvml")})
PY
pack() { tar czf "$OUT/results.tgz" book/results/gpu $(ls -d _build/gpu-notebooks/executed 2>/dev/null) 2>>"$LOG"; }
trap 'pack; exit 124' TERM  # stopped from outside (a time limit): keep what is done so far
start=$SECONDS
for spec in "$@"; do
  limit=${BENCH_LIMIT:-300}
  if [[ $spec =~ ^([0-9]+)@(.*)$ ]]; then limit=${BASH_REMATCH[1]}; spec=${BASH_REMATCH[2]}; fi
  echo "=== [$((SECONDS - start)) s] python -m benchmarks $spec (limit ${limit} s)" | tee -a "$LOG"
  # shellcheck disable=SC2086  # the spec is split into the command and its options on purpose
  timeout --kill-after=15 "$limit" python3 -m benchmarks $spec 2>&1 | tee -a "$LOG"
  echo "=== exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
  pack
done
echo "done in $((SECONDS - start)) s" | tee -a "$LOG"
