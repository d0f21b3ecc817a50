#!/usr/bin/env bash
# The CUDA paths and GPU figures of dsquant in one run of a few minutes (issues 15 and 18):
#
#   bash benchmarks/gpu_check.sh OUT_DIR [TEXT_DIR] [TEXT_MODEL]
#
# OUT_DIR gets log.txt. TEXT_DIR holds instructions_t0.jsonl.gz and banking77_{train,test}.jsonl
# (default ../shared/data/text); TEXT_MODEL is the sentence model (default all-MiniLM-L6-v2).
# Stages, each under its own time limit, so that one that fails or hangs leaves the others:
#   env      GPU, torch, CPU model and its bf16 flags
#   vision   an ImageNet-shaped folder of 30,000 JPEGs; decode images/s with 0-15 workers;
#            ResNet-50 / ViT-B/16 (random weights) forward images/s, bf16 autocast and fp32;
#            `dsquant embed` end to end on CUDA into a store, then `dsquant compress STORE`
#   text     sentence-encoder modes on CUDA (10,000 records), and on 2 CPU threads when the CPU
#            has native bf16 (the issue's 2-core target), with Banking77 accuracy per mode
#   tests    the whole test suite on the CUDA machine (device None resolves to CUDA there)
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [TEXT_DIR] [TEXT_MODEL]}
TEXT=${2:-../shared/data/text}
MODEL=${3:-all-MiniLM-L6-v2}
WORK=${TMPDIR:-/tmp}/dsquant-gpu-check
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
NPROC=$(nproc)

stage() {  # stage NAME SECONDS CMD...: run CMD under a limit, its output into the log
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name: $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
}

stage env 30 bash -c 'nvidia-smi -L; python3 -c "import torch, transformers, sentence_transformers as st, numpy; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0), \"transformers\", transformers.__version__, \"sentence-transformers\", st.__version__, \"numpy\", numpy.__version__, \"cpu capability\", torch.backends.cpu.get_cpu_capability())"; grep -m1 "model name" /proc/cpuinfo; echo "bf16 flags: $(grep -o -w "amx_bf16\|avx512_bf16" /proc/cpuinfo | sort -u | tr "\n" " ")"; nproc'

B="python3 benchmarks/bench_imagenet_scale.py"
stage make-folder 60 $B make-folder "$WORK/imgs" --n 30000 --classes 100 --workers "$NPROC"
stage decode 60 $B decode "$WORK/imgs" --images 6000 --workers 0 4 8 $((NPROC - 1))
stage embed-speed 60 $B embed-speed --device cuda --batch 256 --images 4096
stage embed-store 90 $B embed-store "$WORK/imgs" "$WORK/store" --model resnet50 --device cuda --batch-size 256
stage compress-store 60 python3 -m dsquant.cli compress "$WORK/store" --ratio 0.1 --out "$WORK/run" --quiet

T="python3 benchmarks/bench_text_backends.py --text-dir $TEXT --model $MODEL"
stage text-cuda 90 $T --device cuda --sample 10000 --rounds 1 --batch-size 256 --modes fp32 fp32-tok bf16-tok fp16-tok
if grep -q -w "amx_bf16\|avx512_bf16" /proc/cpuinfo; then
    stage text-cpu-2-threads 120 taskset -c 0,1 $T --device cpu --threads 2 --sample 256 --rounds 2 --modes fp32 fp32-tok bf16-tok bf16-tok-128
    stage text-cpu-banking77 120 $T --device cpu --sample 64 --rounds 1 --banking77 --modes fp32 bf16-tok
fi

stage tests 170 python3 -m pytest -q -p no:cacheprovider -n 12 --timeout 120 tests
