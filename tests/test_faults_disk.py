"""Faults (issue 12): a full disk fails with a clear one-line error and loses nothing: the previous artifacts stay
byte for byte and no temp file is left. ENOSPC is simulated at the write that matters (any machine), and is real on a
small tmpfs where the machine lets the test mount one."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from protege.paths import AssistantPaths
from tests.test_faults import _export_tree, fake_adapter, snapshot


def _data_project(tmp_path: Path, tiny_model_dir: Path, n: int) -> Path:
    from tests.synth import write_dataset

    data = write_dataset(tmp_path / f"data{n}", n=n)
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bot", "base": {"model": str(tiny_model_dir)},
                                   "data": {"files": [str(data)], "val_fraction": 0.2}}))
    return cfg


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_the_data_split_changes_nothing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import protege.config_file
    from protege.cli import main

    cfg = _data_project(tmp_path, tiny_model_dir, 30)
    assert main(["data", "clean", str(cfg)]) == 0
    paths = AssistantPaths.for_name("bot")
    before = snapshot(paths.root)
    cfg = _data_project(tmp_path, tiny_model_dir, 40)  # a new split would differ in every file
    real_fdopen = os.fdopen
    opened = []

    def fdopen(fd, *a, **k):  # the third temp file of the split hits the full disk, after two were written whole
        f = real_fdopen(fd, *a, **k)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(paths.data)):
            opened.append(fd)
            if len(opened) == 3:
                f.write = _enospc
        return f

    monkeypatch.setattr(protege.config_file.os, "fdopen", fdopen)
    assert main(["data", "clean", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "protege data: error: no space left on device writing" in err and "Traceback" not in err
    assert str(paths.data / "data_report.json") in err
    assert snapshot(paths.root) == before, "no file of the previous split may change, and no temp file stay"


def test_full_disk_while_saving_the_adapter_keeps_the_previous_one(tmp_path, tiny_model_dir):
    from builder.train import save_adapter
    from protege.config_file import config_from_dict
    from protege.errors import disk_full

    paths = AssistantPaths(tmp_path / "bot")
    before = snapshot(fake_adapter(paths.adapter, "old"))

    class FullDisk:
        def save_pretrained(self, folder, **_):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc] : file write failed: No space left on device")

    with pytest.raises(RuntimeError) as e:
        save_adapter(FullDisk(), None, config_from_dict({"name": "bot"}), paths.adapter)
    assert disk_full(e.value).startswith("no space left on device")
    assert snapshot(paths.adapter) == before and sorted(p.name for p in paths.root.iterdir()) == ["adapter"]


def test_full_disk_during_export_keeps_the_previous_export(tmp_path, tiny_model_dir, monkeypatch, capsys):
    pytest.importorskip("llama_cpp")
    import export.merge
    from protege.cli import main

    paths = AssistantPaths.for_name("bot").ensure()
    _export_tree(paths.root, "old", ["f16", "q8_0"])
    before = snapshot(paths.root)

    def merge(base_dir, adapter, out_dir, *a, **k):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "model.safetensors"))

    monkeypatch.setattr(export.merge, "merge", merge)
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(yaml.safe_dump({"name": "bot", "base": {"model": str(tiny_model_dir)}}))
    assert main(["export", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "protege export: error: no space left on device writing" in err and "model.safetensors" in err
    assert snapshot(paths.root) == before and not list(paths.root.glob(".export-*"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs, where the machine lets us mount one (root in a container that allows it); else skip."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the simulated ENOSPC tests above still run)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_tmpfs_data_clean_fails_clearly_and_loses_nothing(small_tmpfs, tmp_path, tiny_model_dir,
                                                                          monkeypatch, capsys):
    from protege.cli import main

    monkeypatch.setenv("PROTEGE_HOME", str(small_tmpfs / "home"))
    cfg = _data_project(tmp_path, tiny_model_dir, 30)
    assert main(["data", "clean", str(cfg)]) == 0
    paths = AssistantPaths.for_name("bot")
    before = snapshot(paths.root)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # fill the disk, then give back two pages: not enough for a new split
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - 8192))
    cfg = _data_project(tmp_path, tiny_model_dir, 400)
    assert main(["data", "clean", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "protege data: error: no space left on device" in err and "Traceback" not in err
    assert snapshot(paths.root) == before
    filler.unlink()
    assert main(["data", "clean", str(cfg)]) == 0 and snapshot(paths.root) != before  # room again: it goes through
