#!/usr/bin/env bash
# The GPU run behind docs/selector.md's numbers, on a machine with 2 GPUs (PYTHONPATH must reach vital_hub, and
# trl + datasets for the last step). OUT (default .) receives bench.json and bench.log.
#   1. benchmarks/score_candidates.py on one GPU: paper loop vs `vital select`'s pipeline vs the model alone;
#   2. `vital select` on 1 GPU and under `accelerate launch` on 2 GPUs: the top k must be the same;
#   3. recipes/reward.py on 2 GPUs for a few steps (smoke run of the trainer under accelerate, bf16; SKIP_TRAIN=1
#      leaves it out).
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-.}
WORKERS=${WORKERS:-30}
nvidia-smi -L; nproc
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"

CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/score_candidates.py --workdir /tmp/bench --candidates 50000 \
    --workers "$WORKERS" --json "$OUT/bench.json" 2>&1 | grep -v -e Loading -e Writing | tee "$OUT/bench.log"

S="--selector /tmp/bench/selector --candidates /tmp/bench/candidates_small --images /tmp/bench/figures --top 1000"
S="$S --batch-size 512 --shard-size 1024 --no-progress"
CUDA_VISIBLE_DEVICES=0 timeout 90 python3 -m vital_hub.cli select $S --out /tmp/s1 --workers "$WORKERS" 2>&1 \
    | grep -e rank -e '{' -e Error
timeout 120 accelerate launch --multi_gpu --num_processes 2 --mixed_precision no --dynamo_backend no \
    -m vital_hub.cli select $S --out /tmp/s2 --workers $((WORKERS / 2)) 2>&1 | grep -e rank -e '{' -e Error
python3 - <<'PY'
import pyarrow.parquet as pq

one, two = (pq.read_table(f"/tmp/s{i}/selected.parquet").to_pylist() for i in (1, 2))
same = [r["candidate_id"] for r in one] == [r["candidate_id"] for r in two]
diff = max(abs(a["score"] - b["score"]) for a, b in zip(one, two, strict=True))
print(f"1 GPU vs 2 GPUs: top-{len(one)} identical: {same}; max score difference: {diff}")
PY

[ -n "$SKIP_TRAIN" ] && exit 0
python3 - <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path

sys.path[:0] = ["tests"]
from selector_helpers import preference_rows, tiny_tokenizer, write_figures

from vital_hub.preferences.repo import write_config

root = Path("/tmp/sm")
tiny_tokenizer(root / "tok").save_pretrained(root / "tok")
pair_ids = [f"1000{i}_F1" for i in range(6)]
write_figures(root / "img", pair_ids)
write_config(root / "prefs", "mixed", preference_rows(pair_ids, 40, 20))
PY
timeout 150 accelerate launch --multi_gpu --num_processes 2 --mixed_precision no --dynamo_backend no \
    recipes/reward.py --config recipes/selector/config_smoke.yaml --dataset_name /tmp/sm/prefs \
    --images_dir /tmp/sm/img --tokenizer_name_or_path /tmp/sm/tok --output_dir /tmp/sm/out --max_steps 6 2>&1 \
    | grep -e "'loss'" -e eval_clinician -e Error -e error | tail -8
ls /tmp/sm/out
