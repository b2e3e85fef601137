#!/usr/bin/env bash
# One device call that measures the trainer against its own benchmark on a GPU, and a real `dvc repro`.
#
#   bash train/bench/gpu_check.sh            # on the GPU machine, from the repository root (~8-10 min)
#   QUICK=1 bash train/bench/gpu_check.sh    # the same steps, tiny, on a CPU (checks the script, ~5 min)
#
# Prints one markdown table per part and writes everything under ${OUT:-/tmp/gpu_check}:
#   1. train.bench.bench_gpu, eager and with CUDA graphs (compile reduce-overhead): synthetic step,
#      data only, step fed by the shard sampler, and the trainer's own train_loop (CPU and GPU decode);
#   2. DDP: torchrun with 2 processes on the one GPU (nccl), eager and CUDA graphs, episodes/s per rank;
#   3. train.evaluate itself on 1000 test episodes: episodes/s;
#   4. dvc repro of the toy data with the official model presets (321 px, ResNet-50 frozen, random
#      weights: none can be downloaded there), 3000 steps: wall time per stage, mIoU vs the trivial floor.
set -uo pipefail
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python}
if [[ -n "${QUICK:-}" ]]; then
  DEV=cpu; WORKERS=2; STEPS=4; WARMUP=2; SIZE=65; BACKBONE=small; TRAIN_STEPS=20; EVAL_EPISODES=40; TOY=0.2
  BENCH_EXTRA="--toy-scale 0.1 --sides 100 150"
  COMPILES="none"
else
  DEV=cuda; WORKERS=12; STEPS=60; WARMUP=15; SIZE=321; BACKBONE=resnet50; TRAIN_STEPS=3000; EVAL_EPISODES=1000
  COMPILES="none reduce-overhead"; TOY=1.0; BENCH_EXTRA=""
fi
echo "machine: $(nproc) CPUs; $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")')"

# ---- 1. bench_gpu rows, eager and CUDA graphs
for mode in $COMPILES; do
  echo "## bench_gpu, compile=$mode"
  timeout 240 $PY -m train.bench.bench_gpu --device "$DEV" --workers "$WORKERS" --steps "$STEPS" \
    --warmup "$WARMUP" --size "$SIZE" --backbone "$BACKBONE" --compile "$mode" $BENCH_EXTRA 2>"$OUT/bench_$mode.err" \
    | tee "$OUT/bench_$mode.md" || echo "bench_gpu compile=$mode failed: $(tail -1 "$OUT/bench_$mode.err")"
done

# ---- a scratch DVC workspace for parts 2-4 (the checkout itself is left as it is)
WS="$OUT/ws"
rm -rf "$WS" && mkdir -p "$WS"
cp -r pipeline train fss_model dvc.yaml params.yaml .dvcignore "$WS"/
cd "$WS" || exit 1
git init -q && $PY -m dvc init -q && git add -A >/dev/null && git -c user.email=x@y -c user.name=gpu commit -qm ws
$PY - "$SIZE" "$BACKBONE" "$TRAIN_STEPS" "$EVAL_EPISODES" "$DEV" "$TOY" <<'EOF'
import sys
import yaml
size, backbone, steps, episodes, dev, toy = sys.argv[1:]
p = yaml.safe_load(open("params.yaml"))
p["sampler"].update(image_size=int(size), test_episodes=int(episodes), workers=4)
p["backbone"].update(name=backbone, frozen=True, weights="none")
p["train"].update(steps=int(steps), device=dev, val_every=int(steps), checkpoint_every=int(steps))
p["evaluate"]["batch_size"] = 16
p["toy"]["scale"] = float(toy)
if float(toy) < 1:  # a smaller toy set has too few images per class for 1000 training episodes each
    p["train"]["episodes_per_class"] = 20
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
EOF

# ---- 4 (first: it builds the data parts 2 and 3 use). dvc repro, stage by stage, timed
echo "## dvc repro (toy data, ${SIZE} px, ${BACKBONE} frozen, random weights, ${TRAIN_STEPS} steps)"
echo "| stage | wall s |"
echo "|---|---|"
for stage in check raw shards folds episodes train evaluate report infer; do
  start=$(date +%s.%N)
  if ! $PY -m dvc repro -s "$stage" >"$OUT/repro_$stage.log" 2>&1; then
    echo "| $stage | failed: $(grep -v '^$' "$OUT/repro_$stage.log" | tail -1) |"
    continue
  fi
  echo "| $stage | $(elapsed "$start") |"
done
grep -h "^model\|^all_\|^support_mask\|episodes/s" "$OUT"/repro_evaluate.log "$OUT"/repro_train.log | tail -8

# ---- 3. train.evaluate itself: episodes/s on the manifest the repro drew
echo "## train.evaluate on $EVAL_EPISODES episodes"
start=$(date +%s.%N)
$PY -m train.evaluate --checkpoint models/experiment/best.pt --no-trivial --out "$OUT/eval" >"$OUT/eval.log" 2>&1 \
  && echo "evaluate: $EVAL_EPISODES episodes in $(elapsed "$start") s (process start to end)" \
  || echo "evaluate failed: $(tail -1 "$OUT/eval.log")"

# ---- 2. DDP: 2 processes on the one GPU, eager and CUDA graphs
for mode in $COMPILES; do
  echo "## torchrun --nproc_per_node 2, compile=$mode"
  timeout 240 $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m train.train \
    --shards shards/toy/pascal/denet --folds data/folds/toy/pascal/denet --out "$OUT/ddp_$mode" \
    --progress lines --set train.steps=200 train.compile="$mode" train.val_every=1000 \
    train.checkpoint_every=1000 >"$OUT/ddp_$mode.log" 2>&1 \
    && grep "episodes/s" "$OUT/ddp_$mode.log" | tail -2 \
    || echo "DDP compile=$mode failed: $(grep -i 'error' "$OUT/ddp_$mode.log" | tail -2)"
done
echo "gpu_check done; logs in $OUT"
