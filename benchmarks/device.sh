#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests and the benchmarks in one go, numbers written under
# $OUT (default benchmarks/device-results/). Needs a Python with a CUDA build of torch and the dev
# requirements (make's .venv holds the CPU build: pass PYTHON=/path/to/python with CUDA torch).
#
#   PYTHON=python3 OUT=/tmp/out bash benchmarks/device.sh
#
# Writes: device.txt (nvidia-smi, torch), tests.txt (the CUDA tests), resnet-128.md/json and
# resnet-512.md/json (ResNet-18 at batch 128 and at curvlinops' anchor batch 512: MC-Fisher
# matvec about 2.8x a gradient on an A6000) and population.md/json (training K networks as one population against K sequential fits, on CUDA) and lm.md (GPT-2 small:
# F@v, memory="low" F@v, the MC diagonal and the logit lens over positions), grokking.md (a step, a
# population of 5 seeds and a checkpoint of the grokking study) and grokking-anchor/ (the study at
# p = 113 on Nanda et al.'s transformer, as far as 90 s reach). The other benchmarks
# measure CPU memory (VmHWM) and are run on the CPU machines.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/device-results}
mkdir -p "$OUT" .cache
export MPLCONFIGDIR=$PWD/.cache/matplotlib SCIKIT_LEARN_DATA=$PWD/.cache/sklearn TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/torchinductor
status=0
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi not found"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to $PYTHON: nothing to run" | tee -a "$OUT/device.txt"
  exit 1
fi
# The whole script fits one 10-minute device call (a session's device time is 15 minutes in all):
# each step has its own timeout (seconds), summing to 465 besides set-up; a step cut short says so in its output.
# The CUDA tests only: the CPU suite is `make test`'s.
PYTHONPATH=src timeout 90 "$PYTHON" -m pytest -q -p no:warnings \
  tests/fisher/test_products.py::test_cuda_matches_cpu \
  tests/population/test_population.py::test_the_same_code_runs_on_cuda 2>&1 | tail -15 > "$OUT/tests.txt" || status=1
cat "$OUT/tests.txt"
for batch in 128 512; do
  PYTHONPATH=src timeout 75 "$PYTHON" benchmarks/resnet_benchmark.py --device cuda --batch "$batch" --rounds 10 \
    --out "$OUT/resnet-$batch.md" --json "$OUT/resnet-$batch.json" || status=1
done
# The language model (#23): a GPT-2-small-sized model's Fisher over positions and its logit lens
PYTHONPATH=src timeout 90 "$PYTHON" benchmarks/lm_benchmark.py --device cuda --rounds 5 \
  --out "$OUT/lm.md" || status=1
# The population benchmark on the GPU: K members as one vmap against K sequential fits (#21)
PYTHONPATH=src timeout 60 "$PYTHON" benchmarks/population_benchmark.py --device cuda --rounds 3 \
  --out "$OUT/population.md" --json "$OUT/population.json" || status=1
# Grokking (#22): a step, a population of 5 seeds and a checkpoint on the GPU, then Nanda et al.'s
# configuration (p = 113, the transformer) through the study, resumable: as far as 90 s reach (a
# later call with the same --out goes on from there)
PYTHONPATH=src timeout 60 "$PYTHON" benchmarks/grokking_benchmark.py --device cuda --rounds 3 \
  --out "$OUT/grokking.md" || status=1
PYTHONPATH=src timeout 90 "$PYTHON" experiments/e6_grokking.py run --config anchor --device cuda \
  --out "$OUT/grokking-anchor" || status=1
exit $status
