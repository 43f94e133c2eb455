#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (2-core CPU, no hub access): .venv with CPU torch, llama-cpp-python built
# with portable flags, llama.cpp's own GGUF converter (from the same sdist as the runtime), and protege[dev].
# A second run with nothing changed returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
# The default native build segfaults in llama_decode on these CPUs: build for a portable AVX2 target.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

stamp_of() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.protege-setup-$(stamp_of)"
if [ -f "$STAMP" ]; then exit 0; fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel setuptools scikit-build-core >/dev/null

# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION (CPU)"
  $PIP install -q "torch==$TORCH_VERSION"
fi

SHARE="$VENV/share/protege/llama.cpp"
SDIST_DIR="$VENV/share/protege/sdist"
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null || [ ! -f "$SHARE/convert_hf_to_gguf.py" ]; then
  mkdir -p "$SDIST_DIR"
  SDIST="$SDIST_DIR/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
  [ -f "$SDIST" ] || $PIP download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$SDIST_DIR"
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (6-8 min on 2 cores)"
    $PIP install -q numpy typing-extensions diskcache jinja2
    $PIP install -q --no-deps --no-build-isolation "$SDIST"
  fi
  # llama.cpp's converter of exactly the runtime's version, with its own gguf-py (install time, never run time).
  tmp=$(mktemp -d)
  tar -xzf "$SDIST" -C "$tmp" --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
      '*/vendor/llama.cpp/convert_lora_to_gguf.py' '*/vendor/llama.cpp/gguf-py/*' \
      '*/vendor/llama.cpp/conversion/*'
  rm -rf "$SHARE" && mkdir -p "$(dirname "$SHARE")"
  mv "$tmp"/*/vendor/llama.cpp "$SHARE"
  echo "$LLAMA_CPP_VERSION" > "$SHARE/VERSION"
  rm -rf "$tmp"
fi

echo "setup: installing protege[dev]"
$PIP install -q -e ".[dev]"
rm -f "$VENV"/.protege-setup-*
touch "$STAMP"
echo "setup: done"
