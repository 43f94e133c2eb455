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
# The default native build segfaults in llama_decode on these CPUs: build for a portable AVX2 target. Only the
# libraries we load: no multimodal (mtmd/llava) library, which llama_cpp imports only for image chat handlers.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"}
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
  # only this package as an sdist; its build backend comes from the venv (a `:all:` download compiled every build
  # dependency from source, minutes on 2 cores)
  [ -f "$SDIST" ] || $PIP download -q --no-deps --no-binary llama-cpp-python --no-build-isolation \
      "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$SDIST_DIR"
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    # The built wheel is cached outside .venv, keyed by version, flags and Python: a re-created venv installs it in
    # seconds instead of compiling again. Built into a temp folder, then renamed; a lock keeps two set-ups apart.
    CACHE=${PROTEGE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/protege/wheels}
    py_id=$("$VENV/bin/python" -c 'import platform, sys; print(sys.implementation.cache_tag, platform.machine())')
    WHEELS="$CACHE/llama-cpp-python-$LLAMA_CPP_VERSION-$(printf '%s|%s' "$CMAKE_ARGS" "$py_id" | sha256sum | cut -c1-12)"
    mkdir -p "$CACHE"
    $PIP install -q numpy typing-extensions diskcache jinja2
    (
      flock 9
      if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (about 6 min on 2 cores)"
        rm -rf "$WHEELS.tmp"
        $PIP wheel -q --no-deps --no-build-isolation "$SDIST" -w "$WHEELS.tmp"
        mv "$WHEELS.tmp" "$WHEELS"
      else
        echo "setup: llama-cpp-python $LLAMA_CPP_VERSION from the wheel cache ($WHEELS)"
      fi
    ) 9>"$CACHE/.lock"
    $PIP install -q --no-deps "$WHEELS"/llama_cpp_python-*.whl
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
