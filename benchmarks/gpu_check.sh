#!/usr/bin/env bash
# One prepared pass of the checks that need a CUDA GPU (the tests never do): AMP training on the GPU,
# resume, half-precision validation and export, GPU latency and training throughput.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh      # from the repository root, on a machine with CUDA
#
# It runs from the source tree (PYTHONPATH=src) with whatever python3 holds torch there, writes its
# logs and JSON under $OUT, and takes about 5 minutes on one H100/H200 with 16 CPU cores.
set -uo pipefail
OUT=${OUT:-/tmp/efyolo-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
EF="$PY -m efyolo"
WORK=$(mktemp -d)
step() { echo; echo "=== $* ($(date +%T))"; }
fail=0
check() { "$@" || { echo "FAILED: $*"; fail=1; }; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nproc

step "CUDA tests (the ones the CPU suite skips)"
check $PY -m pytest -q -p no:cacheprovider tests/test_loss.py::test_loss_on_cuda_matches_cpu \
    tests/test_cli_profile.py::test_profile_half_on_cuda

step "synthetic data"
check $EF synth --out "$WORK/synth" --train 2000 --val 400 --imgsz 320 --seed 1
DATA=$WORK/synth/data.yaml

step "AMP training on the GPU: yolov5s-efficientformer-l1, 320, 6 epochs"
check $EF train --data "$DATA" --model yolov5s-efficientformer-l1 --imgsz 320 --epochs 6 --batch 32 \
    --device 0 --workers 8 --project "$WORK/runs" --name l1 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" \
    | tee "$OUT/train_l1.log"
RUN=$WORK/runs/l1
cp "$RUN/results.csv" "$OUT/results_l1.csv" 2>/dev/null

step "resume on the GPU: kill a yolov5n run during epoch 2, resume it"
$EF train --data "$DATA" --model yolov5n --imgsz 320 --epochs 3 --batch 32 --device 0 --workers 8 \
    --project "$WORK/runs" --name n > "$OUT/train_n_killed.log" 2>&1 &
pid=$!
for _ in $(seq 240); do [ -f "$WORK/runs/n/weights/last.pt" ] && break; sleep 0.5; done
sleep 2; kill -9 $pid; wait $pid 2>/dev/null
check $EF train --resume "$WORK/runs/n/weights/last.pt" 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" \
    | tee "$OUT/train_n_resumed.log"
cp "$WORK/runs/n/results.csv" "$OUT/results_n.csv" 2>/dev/null

step "val on the GPU: fp32 and --half"
check $EF val --weights "$RUN/weights/best.pt" --data "$DATA" --imgsz 320 --device 0 --workers 8 --json \
    --project "$WORK/val" > "$OUT/val_fp32.json"
check $EF val --weights "$RUN/weights/best.pt" --data "$DATA" --imgsz 320 --device 0 --workers 8 --json --half \
    --project "$WORK/val" > "$OUT/val_fp16.json"

step "export --half on CUDA (TorchScript, ONNX) and val of the TorchScript file"
check $EF export --weights "$RUN/weights/best.pt" --format torchscript --imgsz 320 --half --device 0
check $EF val --weights "$RUN/weights/best.torchscript" --data "$DATA" --imgsz 320 --device 0 --half --workers 8 \
    --json --project "$WORK/val" > "$OUT/val_torchscript_fp16.json"
check $EF export --weights "$RUN/weights/best.pt" --format onnx --imgsz 320 --half --device 0
$PY -c "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m); print('onnx fp16 ok, input type', m.graph.input[0].type.tensor_type.elem_type)" "$RUN/weights/best.onnx"

step "detect on the GPU"
check $EF detect --weights "$RUN/weights/best.pt" --source "$WORK/synth/images/val" --device 0 --half \
    --project "$WORK/detect" --save-txt --nosave | tail -3

step "GPU latency, batch 1, 640: fp32 and fp16"
ZOO=yolov5n,yolov5s,yolov5m,yolov5s-efficientformer-l1,yolov5s-efficientformer-l3,yolov5s-efficientformer-l7
check $EF profile --model $ZOO --imgsz 640 --device 0 --runs 100 --warmup 20 | tee "$OUT/profile_fp32.txt"
check $EF profile --model $ZOO --imgsz 640 --device 0 --runs 100 --warmup 20 --half | tee "$OUT/profile_fp16.txt"

step "GPU training throughput (AMP), 640, batch 32"
check $PY benchmarks/bench_train.py --models yolov5n,yolov5s,yolov5s-efficientformer-l1 --imgsz 640 --batch 32 \
    --iters 20 --workers 8 --device 0 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tee "$OUT/bench_train_gpu.txt"

step "done: $([ $fail = 0 ] && echo all passed || echo SOME FAILED)"
exit $fail
