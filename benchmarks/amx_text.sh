#!/usr/bin/env bash
# The text figures of issue 18 that need a CPU with native bf16 (AMX or AVX512-BF16), measured on
# 2 of its cores (the 2-core target):
#
#   bash benchmarks/amx_text.sh OUT_DIR [TEXT_DIR] [TEXT_MODEL] [STAGES]
#
# TEXT_DIR holds instructions_t0.jsonl.gz (default ../shared/data/text); TEXT_MODEL is the
# sentence model (default all-MiniLM-L6-v2); STAGES is any of "whole batch" (default both).
#   whole  `dsquant compress` of all 53,785 records in the fast mode (--max-tokens 128, the bf16
#          that --encoder-precision auto picks on such a CPU), cores 0-1, timed end to end with
#          peak RSS (/usr/bin/time -v when present)
#   batch  bench_text_backends.py on cores 0-1, 2 threads: float32 against bf16 with token-length
#          batches of 16-128 and eager attention, interleaved, 256 records x 3 rounds
# OUT_DIR gets log.txt and the compress manifest.
set -u
OUT=${1:?usage: amx_text.sh OUT_DIR [TEXT_DIR] [TEXT_MODEL] [STAGES]}
TEXT=${2:-../shared/data/text}
MODEL=${3:-all-MiniLM-L6-v2}
STAGES=${4:-whole batch}
WORK=${TMPDIR:-/tmp}/dsquant-amx-text
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
grep -m1 "model name" /proc/cpuinfo | tee -a "$LOG"
echo "bf16 flags: $(grep -o -w 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')" | tee -a "$LOG"
TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v)

for stage in $STAGES; do
    start=$(date +%s)
    echo "=== $stage" | tee -a "$LOG"
    case $stage in
        whole)
            rm -rf "$WORK/fast"
            taskset -c 0,1 "${TIME[@]}" python3 -m dsquant.cli compress "$TEXT/instructions_t0.jsonl.gz" --text-model "$MODEL" \
                --max-tokens 128 --ratio 0.1 --device cpu --out "$WORK/fast" --no-cache --quiet >>"$LOG" 2>&1
            echo "exit $?" >>"$LOG"
            cp "$WORK/fast/manifest.json" "$OUT/fast-manifest.json" 2>/dev/null ;;
        batch)
            taskset -c 0,1 python3 benchmarks/bench_text_backends.py --text-dir "$TEXT" --model "$MODEL" --device cpu --threads 2 \
                --sample 256 --rounds 3 --modes fp32 bf16-tok-b16 bf16-tok-b32 bf16-tok bf16-tok-b128 bf16-tok-eager >>"$LOG" 2>&1 ;;
    esac
    echo "=== $stage: $(( $(date +%s) - start )) s" | tee -a "$LOG"
done
