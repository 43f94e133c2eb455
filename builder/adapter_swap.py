"""Replace the trained adapter folder so that a kill -9 at any instant leaves one complete adapter to use.

Why: the adapter used to be swapped in with two renames (adapter -> adapter.old, adapter.tmp -> adapter); a kill
between them left only adapter.old, and a later export then merged nothing and silently shipped the base model.

The sequence, each step a rename or a removal:
    write adapter.tmp            (incomplete: discarded by recover)
    adapter.tmp -> adapter.new   (the commit point: a complete new adapter; recover finishes installing it)
    adapter -> adapter.old, adapter.new -> adapter, remove adapter.old
`recover` runs at the start of train, eval and export, under the assistant's lock (protege.lock).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from protege.paths import AssistantPaths

TMP, NEW, OLD = ".tmp", ".new", ".old"
MARKER = "adapter_config.json"  # peft writes it with the weights; a folder without it is no adapter


def sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def is_adapter(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def commit(tmp: Path, out: Path) -> None:
    """Install the complete adapter written in `tmp` as `out` (see the module doc for why this order)."""
    new = sibling(out, NEW)
    shutil.rmtree(new, ignore_errors=True)
    tmp.rename(new)
    _finish(out)


def _finish(out: Path) -> None:
    new, old = sibling(out, NEW), sibling(out, OLD)
    if new.exists():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def recover(paths: AssistantPaths) -> str | None:
    """Finish or undo an adapter swap cut short by a kill; returns what was done (None: nothing to do)."""
    from protege.lock import assistant_lock

    out = paths.adapter
    tmp, new, old = sibling(out, TMP), sibling(out, NEW), sibling(out, OLD)
    if not (tmp.exists() or new.exists() or old.exists()):
        return None
    done = []
    with assistant_lock(paths):
        if tmp.exists():
            shutil.rmtree(tmp)
            done.append(f"dropped the unfinished {tmp.name}")
        if new.exists() and not is_adapter(new):
            shutil.rmtree(new)
            done.append(f"dropped the incomplete {new.name}")
        if new.exists():
            _finish(out)
            done.append(f"installed the completed {new.name}")
        elif old.exists():
            if out.exists() and is_adapter(out):
                shutil.rmtree(old)
                done.append(f"removed the leftover {old.name}")
            else:
                shutil.rmtree(out, ignore_errors=True)
                old.rename(out)
                done.append(f"restored the previous adapter from {old.name}")
    return "; ".join(done)
