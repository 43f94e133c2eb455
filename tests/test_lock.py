"""One writer per assistant (issue 12, point 7): a second build/train/export/index/data/eval of an assistant that
another process is writing fails at once with AssistantBusy, naming the assistant, the lock file and the holder's
pid, and touches nothing (the first run's staging folder survives). The lock dies with its holder, kill -9 included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protege.errors import AssistantBusy
from protege.paths import AssistantPaths

NAME = "locky"
HOLDER = """
import sys, time
from pathlib import Path
from protege.lock import acquire
from protege.paths import AssistantPaths
acquire(AssistantPaths(Path(sys.argv[1])))
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(protege_home):
    """Another process holding the assistant's lock, as a running `protege export` would; yields (paths, pid)."""
    paths = AssistantPaths.for_name(NAME).ensure()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths.root)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    try:
        assert proc.stdout.readline().strip() == "held"
        yield paths, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def config_file(tmp_path) -> Path:
    (tmp_path / "conv.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "Ahoy!"}]}\n')
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("# A\nfacts")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"name": NAME, "data": {"files": ["conv.jsonl"]}, "knowledge": {"folder": "kb"}}))
    return cfg


def _staging(paths: AssistantPaths) -> Path:
    """What a first export still running has on disk: an unverified staging folder (recover() would delete it)."""
    stage = paths.root / ".export-stage-first"
    (stage / "merged").mkdir(parents=True)
    (stage / "merged" / "model.safetensors").write_bytes(b"half of a merged model")
    return stage


@pytest.mark.parametrize("argv", [["export"], ["train"], ["build"], ["index"], ["data", "clean"], ["eval"],
                                  ["rag", "calibrate"]])
def test_second_run_fails_with_the_holder_named_and_leaves_the_first_runs_staging(holder, config_file, capsys, argv):
    from protege.cli import main

    paths, proc = holder
    stage = _staging(paths)
    qa = config_file.parent / "qa.jsonl"
    qa.write_text('{"question": "What is A?", "source": "a.md"}\n')
    args = [*argv, str(config_file)] + ([str(qa)] if argv[0] == "rag" else [])
    assert main(args) == AssistantBusy.exit_code == 75
    err = capsys.readouterr().err
    assert f"assistant '{NAME}' is busy" in err and f"pid {proc.pid}" in err and str(paths.root / ".lock") in err
    assert (stage / "merged" / "model.safetensors").read_bytes() == b"half of a merged model"


def test_export_library_call_and_recovery_also_wait_for_the_lock(holder, tiny_model_dir):
    from export.pipeline import recover, run
    from protege.config_file import config_from_dict

    paths, proc = holder
    stage = _staging(paths)
    with pytest.raises(AssistantBusy, match=f"pid {proc.pid}"):
        recover(paths)
    with pytest.raises(AssistantBusy):
        run(config_from_dict({"name": NAME, "base": {"model": str(tiny_model_dir)}}), paths)
    assert stage.is_dir()


def test_the_lock_dies_with_a_killed_holder_and_recovery_then_runs(holder):
    from export.pipeline import recover

    paths, proc = holder
    stage = _staging(paths)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    recover(paths)  # the holder is gone: its unverified staging folder is debris now
    assert not stage.exists()
    assert (paths.root / ".lock").read_bytes() == b"", "released locks leave an empty file (folders stay comparable)"


def test_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    from protege import lock

    paths = AssistantPaths(tmp_path / NAME)
    with lock.assistant_lock(paths):
        with lock.assistant_lock(paths):  # build holds it while its stages take it again
            assert lock.held(paths)
            assert (paths.root / ".lock").read_text().strip() == str(os.getpid())
            probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                    "from protege.lock import acquire; from protege.paths import AssistantPaths; "
                                    "acquire(AssistantPaths(Path(sys.argv[1])))", str(paths.root)],
                                   capture_output=True, text=True, timeout=60,
                                   env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
            assert probe.returncode != 0 and "AssistantBusy" in probe.stderr and f"pid {os.getpid()}" in probe.stderr
        assert lock.held(paths)
    assert not lock.held(paths)
    with lock.assistant_lock(paths):  # free again
        pass


def test_cli_releases_the_lock_when_the_command_ends(config_file, capsys):
    from protege import lock
    from protege.cli import main

    assert main(["data", "clean", str(config_file)]) == 0
    paths = AssistantPaths.for_name(NAME)
    assert not lock.held(paths) and (paths.root / ".lock").is_file()


def test_read_only_commands_do_not_wait_for_a_build(holder, config_file):
    from protege.cli import main

    assert main(["data", "check", str(config_file)]) == 0
