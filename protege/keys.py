"""API keys at rest: a config may hold `sha256:<hex>` digests instead of keys (the edge bundle ships only those).

The server keeps every key as its SHA-256 digest and compares the digest of a request's key in constant time
(serve/ops.py), so a digest in a config works exactly like the key it was made from.
"""

from __future__ import annotations

import hashlib

HASH_PREFIX = "sha256:"


def is_hashed(key: str) -> bool:
    hexpart = key[len(HASH_PREFIX):]
    return key.startswith(HASH_PREFIX) and len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart.lower())


def hash_key(key: str) -> str:
    """`sha256:<hex>` of an API key (a value already in that form is kept)."""
    return key if is_hashed(key) else HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def key_digest(key: str) -> bytes:
    """The 32-byte digest the server compares: of the key, or the one a `sha256:<hex>` entry holds."""
    return bytes.fromhex(key[len(HASH_PREFIX):]) if is_hashed(key) else hashlib.sha256(key.encode()).digest()
