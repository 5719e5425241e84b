#!/usr/bin/env bash
# The prepared GPU check of the policy and learner (README "Policy"), for a GPU host that
# has CUDA 13 libraries (e.g. from a PyTorch cu130 install) but no Rust toolchain.
#
# Here (no GPU needed):
#   eval "$(../shared/tools/cuda-build-env.sh)"
#   cargo build --release -p tgrpo --features cuda
#   mkdir -p .gpu && strip -o .gpu/tgrpo target/release/tgrpo && gzip -9 .gpu/tgrpo   # ~26 MB
#   cp scripts/gpu-check.sh .gpu/
# There:
#   bash .gpu/gpu-check.sh
#
# Prints: GPU correctness (model and LoRA self-checks in bf16 and f32, logits against
# candle-transformers), sampling tokens/s on a Qwen2.5-1.5B-shaped random bf16 model with
# LoRA r=64 (B=1 and B=16, prompt 128, 256 new tokens), and the learner micro-step
# (B=16 x T=512) in 8 micro-batches.
set -u
cd "$(dirname "$0")"
if [ -f tgrpo.gz ]; then gunzip -c tgrpo.gz > tgrpo; fi
chmod +x ./tgrpo
dirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13; do
  f=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print 2>/dev/null | head -1)
  [ -n "$f" ] && dirs="$dirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TGRPO_LOG=warn
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
T() { echo "== $*"; local s; s=$(date +%s%N); timeout "$@"; local rc=$?; echo "== rc=$rc in $(( ($(date +%s%N) - s) / 1000000 )) ms"; }
T 120 ./tgrpo check model --model builtin:demo --output-dir /tmp/tgrpo-gpu-check --set model.device=cuda --set model.dtype=bf16
T 120 ./tgrpo check lora --model builtin:demo --output-dir /tmp/tgrpo-gpu-check --set model.device=cuda --set model.dtype=bf16
T 120 ./tgrpo check lora --model builtin:demo --output-dir /tmp/tgrpo-gpu-check --set model.device=cuda --set model.dtype=f32
T 120 ./tgrpo bench sample --models tiny --device cuda --dtype f32 --batches 1,8 --new-tokens 32 --rounds 1
T 240 ./tgrpo bench sample --models qwen2.5-1.5b --device cuda --dtype bf16 --batches 1,16 --prompt-len 128 --new-tokens 256 --rounds 2
T 240 ./tgrpo bench learner --shapes qwen2.5-1.5b --device cuda --dtype bf16 --sequences 16 --prompt-len 128 --completion-len 384 --steps 2 --warmup 1 --micro-batches 8
