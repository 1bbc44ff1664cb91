#!/usr/bin/env bash
# GPU correctness run for the Triton scan: the same tests the CPU runs under Triton's interpreter,
# here with TRITON_INTERPRET unset so the compiled kernels (native tl.associative_scan, GPU block
# sizes, atomics) run on CUDA tensors. Then, with --bench, the benchmark table.
#
#   bash bench/gpu_check.sh            # tests only (~1 min incl. compiling)
#   bash bench/gpu_check.sh --bench    # tests, then python -m bench.gpu_scan --train
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
unset TRITON_INTERPRET
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on the GPU machine')"
"$PY" -c "import torch, triton; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"
"$PY" -m pytest -q -ra tests/test_scan_triton.py tests/test_scan_torch.py
# Mamba-2 (SSD): every backend against the reference on CUDA tensors, then a brief triton-vs-torch table
"$PY" -m pytest -q -ra tests/test_ssd_scan.py
"$PY" -m bench.ssd_scan --device cuda --quick
if [[ "${1:-}" == "--bench" ]]; then
    "$PY" -m bench.gpu_scan --train --out "bench/gpu_scan-$(date -u +%Y%m%dT%H%MZ)"
fi
