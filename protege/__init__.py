"""Protégé: a persona + example conversations + documents -> a private assistant that runs offline.

The public API (protege/api.py) is importable from here; it loads on first use, so `import protege` (and the CLI's
`--help`) stays free of torch, chromadb and llama_cpp:

    import protege
    a = protege.Assistant.load("captain-byte")
    print(a.ask("How much does the Sloop server cost each month?").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Assistant", "AssistantInfo", "Reply", "ReplyStream", "build", "import_base", "list_assistants"]

if TYPE_CHECKING:
    from protege.api import Assistant, AssistantInfo, Reply, ReplyStream, build, import_base, list_assistants


def __getattr__(name: str) -> Any:
    if name in __all__:
        from protege import api

        return getattr(api, name)
    raise AttributeError(f"module 'protege' has no attribute {name!r}")
