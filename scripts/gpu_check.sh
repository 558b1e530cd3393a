#!/usr/bin/env bash
# The GPU check of issue #9, in ONE call of the device tool (one H200, no network, Python 3.12 with torch).
# Prepare it first on the CPU machine (a small task, its CPU answers, the wheels the GPU machine lacks):
#   .venv/bin/python scripts/gpu_check_prepare.py
# then:   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu-check"], timeout_s=540)
# Results: $OUT/gpu-<time>.json (the GPU named), the log and the server's log beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
for need in .gpu-check/check.json .gpu-check/rows.npz; do
	[ -f "$need" ] || { echo "missing $need: run scripts/gpu_check_prepare.py first and carry .gpu-check"; exit 2; }
done
# Not installed here: the three package roots (cascade/, client/cascade_client/, export/cascade_export/) go on the path.
export PYTHONPATH="$PWD:$PWD/client:$PWD/export${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
	echo "== machine"
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
	python3 --version
	python3 -c 'import torch, numpy; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__)'
	python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' || echo "no onnxruntime"
	echo "== wheels"
	# numpy: the project's pin (1.26)
	python3 -m pip install -q --no-deps --no-index .whl/*.whl || { echo "pip install of .whl/ failed"; exit 3; }
	# The Python-backend stub links against this Python's shared library.
	libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
	export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	echo "== check"
	timeout 420 python3 scripts/gpu_check.py --out "$out"
} 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
