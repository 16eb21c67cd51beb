#!/usr/bin/env bash
# Sets up a fresh machine for atlas-stream, and is safe to re-run (everything is cached):
#   - a JDK, Maven, kcat and chromium from apt when missing (the local Kafka runs on the JVM;
#     chromium is the browser of the console's tests),
#   - a virtualenv in .venv with atlas-stream and its extras (pip's cache keeps the wheels),
#   - Apache Kafka's jars from Maven Central into ~/.cache/atlas-stream ($ATLAS_CACHE_DIR),
#   - the offline model (SmolLM2) converted from its GGUF there too, so that `atlas demo` and the
#     workers it starts find it ready instead of converting it while they start.
# ATLAS_EXTRAS adds pip extras (e.g. ATLAS_EXTRAS=gpu). PYTHON picks the interpreter (>= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
# The web console's browser tests drive Debian's chromium through Playwright (no browser download).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing with apt-get: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "atlas-stream needs Python >= 3.11; set PYTHON to one" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python compiles llama.cpp on first install (~6 min on 2 cores); pip caches the wheel.
# A portable AVX2 build: -march=native also compiles llama.cpp's AMX kernels, which segfault on
# the first decode on this project's machines (Xeon with AMX, llama-cpp-python 0.3.36).
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"}
.venv/bin/python -m pip install -q -e ".[dev,local,train${ATLAS_EXTRAS:+,$ATLAS_EXTRAS}]"
.venv/bin/python - <<'PY'
import time

from atlas.settings import Settings
from deploy.local.kafka import fetch_jars
from runtime.backends.local import SMOLLM2_NAME, default_model_dir, smollm2_gguf

cache_dir = Settings().cache_dir
print("Kafka jars:", fetch_jars(cache_dir))
started = time.perf_counter()
cached = (cache_dir / "models" / SMOLLM2_NAME / "model.safetensors").exists()
folder = default_model_dir(cache_dir)
done = "already there" if cached else f"converted from {smollm2_gguf().name}"
print(f"offline model: {folder} ({done}, {time.perf_counter() - started:.1f} s)")
PY
# The Kubernetes manifests' tests render deploy/k8s with kustomize (or kubectl's built-in one):
# Debian's kubernetes-client is too old for it, so build kustomize from its Go module.
if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1; then
  if command -v go >/dev/null 2>&1; then
    GOBIN=/usr/local/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
  else
    echo "no kubectl, kustomize or go: tests/test_k8s_manifests.py will be skipped" >&2
  fi
fi
echo "set up: .venv/bin/atlas --help"
