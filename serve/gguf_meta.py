"""What a GGUF file says about itself (for /api/show and /api/tags): its key/value metadata, its parameter count (summed
over the tensor infos, as Ollama's `general.parameter_count`) and its end-of-sequence token.

Only the header is read: scalar values are decoded, arrays (the tokenizer's vocabulary and merges) are stepped over,
tensor data is never touched, so a 100 MB file costs a few milliseconds (the `gguf` package's GGUFReader decodes every
token into numpy, seconds for the same file, and is not part of the `serve` install). Results are cached per (path,
size, mtime). A file that is not a readable GGUF gives None.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

# GGUF value types -> struct format (7 is bool, 8 string, 9 array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# llama.cpp's llama_ftype (general.file_type) -> the name Ollama shows as quantization_level
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              32: "BF16"}


@dataclass(frozen=True)
class GGUFMeta:
    metadata: dict[str, Any]                       # scalar and string values; arrays as None (like Ollama's model_info)
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    eos_token: str | None = None

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def context_length(self) -> int | None:
        return self.metadata.get(f"{self.architecture}.context_length")

    @property
    def file_type(self) -> str | None:
        return FILE_TYPES.get(self.metadata.get("general.file_type"))  # type: ignore[arg-type]

    def model_info(self) -> dict[str, Any]:
        """Ollama's /api/show `model_info`: every key (arrays as null, the chat template left out: it is the
        `template`), plus general.parameter_count."""
        info = {k: v for k, v in self.metadata.items() if k != "tokenizer.chat_template"}
        info["general.parameter_count"] = self.parameter_count
        return dict(sorted(info.items()))


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        return self.f.read(self.take("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.f.seek(self.take("<Q"), 1)

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        raise ValueError(f"unknown GGUF value type {vtype}")

    def skip_array(self, itype: int, n: int) -> None:
        if itype == _STRING:
            for _ in range(n):
                self.skip_string()
        elif itype == _ARRAY:
            for _ in range(n):
                self.skip_array(self.take("<I"), self.take("<Q"))
        elif itype in _SCALAR:
            self.f.seek(struct.calcsize(_SCALAR[itype]) * n, 1)
        else:
            raise ValueError(f"unknown GGUF array type {itype}")


def parse(path: Path) -> GGUFMeta:
    """Read the header of a GGUF (v2/v3, little-endian); ValueError when the file is not one."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = r.take("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = r.take("<Q"), r.take("<Q")
        meta: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        tokens_at: tuple[int, int] | None = None   # (file offset of the first token string, count)
        for _ in range(n_kv):
            key, vtype = r.string(), r.take("<I")
            if vtype == _ARRAY:
                itype, n = r.take("<I"), r.take("<Q")
                if key == "tokenizer.ggml.tokens" and itype == _STRING:
                    tokens_at = (f.tell(), n)
                r.skip_array(itype, n)
                meta[key], lengths[key] = None, n
            else:
                meta[key] = r.value(vtype)
        params = 0
        for _ in range(n_tensors):
            r.skip_string()
            dims = [r.take("<Q") for _ in range(r.take("<I"))]
            r.take("<I"), r.take("<Q")  # ggml type, data offset
            count = 1
            for d in dims:
                count *= d
            params += count
        eos = None
        eos_id = meta.get("tokenizer.ggml.eos_token_id")
        if tokens_at and isinstance(eos_id, int) and 0 <= eos_id < tokens_at[1]:
            f.seek(tokens_at[0])
            for _ in range(eos_id):
                r.skip_string()
            eos = r.string()
    return GGUFMeta(meta, lengths, params, eos)


_cache: dict[tuple[str, int, int], GGUFMeta | None] = {}
_lock = threading.Lock()


def read_meta(path: Path | None) -> GGUFMeta | None:
    """`parse`, cached per (resolved path, size, mtime_ns); None for a missing or unreadable file."""
    if path is None:
        return None
    try:
        path = Path(path).resolve()
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        meta: GGUFMeta | None = parse(path)
    except (OSError, ValueError, struct.error, OverflowError) as e:
        log.warning("cannot read the GGUF header of %s: %s", path, e)
        meta = None
    with _lock:
        for old in [k for k in _cache if k[0] == key[0]]:
            del _cache[old]
        _cache[key] = meta
    return meta
