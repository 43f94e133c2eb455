"""`protege run`: the REPL's commands and multi-line input, in-process (fake engine) and against a live server."""

from __future__ import annotations

import io

from rich.console import Console

from protege.cli import main
from protege.commands.run import chat_loop, read_message


def _reader(lines):
    it = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return read


def test_read_message_multiline():
    assert read_message(_reader(['"""first', "second", 'third"""'])) == "first\nsecond\nthird"
    assert read_message(_reader(["plain"])) == "plain"
    assert read_message(_reader([])) is None


def test_chat_loop_clear_and_bye():
    seen: list[list[dict]] = []

    def chat(messages):
        seen.append([dict(m) for m in messages])
        yield "text", f"answer{len(messages)}"
        yield "note", "\n[sources: a.md; confidence 0.90]"  # shown, never kept in the conversation

    out = io.StringIO()
    chat_loop(chat, Console(file=out, width=200), "test", _reader(["hi", "again", "/clear", "fresh", "/bye", "x"]))
    assert [len(m) for m in seen] == [1, 3, 1]  # history grows, /clear resets it, /bye stops before "x"
    assert seen[1][1] == {"role": "assistant", "content": "answer1"}
    assert "answer1" in out.getvalue() and "[sources: a.md" in out.getvalue() and "Cleared" in out.getvalue()


def test_run_one_shot_in_process(capsys):
    assert main(["run", "configs/minimal.yaml", "--local", "--engine", "fake", "--prompt", "hi there"]) == 0
    assert "Echo: hi there" in capsys.readouterr().out


def test_run_against_a_running_server(tmp_path, capsys):
    from protege.config import ServeConfig
    from protege.config_file import config_from_dict
    from serve.app import create_app
    from serve.engines.fake import FakeEngine
    from serve.registry import Registry
    from tests.net import app_server

    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    app = create_app(Registry([config_from_dict({"name": "minimal"})], embedded_gguf=gguf),
                     lambda spec: FakeEngine(), ServeConfig(api_keys=["k"]))
    with app_server(app) as base:
        rc = main(["run", "minimal", "--host", base, "--api-key", "k", "--prompt", "via http"])
        assert rc == 0 and "Echo: via http" in capsys.readouterr().out
        rc = main(["run", "minimal", "--host", base, "--api-key", "wrong", "--prompt", "x"])
        err = capsys.readouterr().err  # the server's own message, one line, the typed error's exit code
        assert rc == 1 and "Incorrect or missing API key" in err and "Traceback" not in err


def test_server_errors_are_typed_with_the_server_code():
    from protege.commands.run import server_error
    from protege.errors import GenerationError

    e = server_error(404, '{"error": {"message": "no model x", "code": "model_not_found", "type": "x"}}')
    assert isinstance(e, GenerationError) and str(e) == "no model x" and e.code == "model_not_found"
    e = server_error(502, "<html>Bad Gateway</html>")  # a proxy's page, not the server's JSON
    assert isinstance(e, GenerationError) and e.code is None and "HTTP 502" in str(e) and "Bad Gateway" in str(e)


def test_run_unknown_model_fails_with_one_line(capsys):
    assert main(["run", "no-such-assistant", "--local", "--engine", "fake", "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "no assistant 'no-such-assistant'" in err and "protege build" in err and "Traceback" not in err
