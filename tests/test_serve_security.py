"""`protege serve` security and recovery (issue 12): each assistant's own API keys however the server starts, keys
hashed at rest (edge bundle), no open non-loopback bind, /health that recovers, 500s that leak nothing."""

from __future__ import annotations

import logging
import tarfile
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from protege.cli import main
from protege.commands.serve import check_exposure, is_loopback
from protege.config import ServeConfig
from protege.config_file import config_from_dict, save_resolved
from protege.errors import ConfigError
from protege.keys import hash_key
from protege.paths import AssistantPaths
from serve.app import create_app
from serve.engines.fake import FakeEngine
from serve.registry import Registry
from tests.fakes import FakeEmbedder

USER = [{"role": "user", "content": "hello there"}]


def _app(tmp_path, configs, server_keys=(), include_built=False, factory=None, **app_kw):
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF")
    registry = Registry(configs, include_built=include_built, embedded_gguf=gguf)
    cfg = ServeConfig(api_keys=list(server_keys))
    return create_app(registry, factory or (lambda spec: FakeEngine([spec.id])), cfg, embedder_factory=FakeEmbedder,
                      **app_kw)


def _bearer(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _chat(c, model: str, key: str | None):
    return c.post("/v1/chat/completions", json={"model": model, "messages": USER}, headers=_bearer(key))


def _assistants():
    return [config_from_dict({"name": "alpha", "serve": {"api_keys": ["key-alpha"]}}),
            config_from_dict({"name": "beta", "serve": {"api_keys": [hash_key("key-beta")]}}),  # a digest at rest
            config_from_dict({"name": "gamma"})]


def test_each_assistant_enforces_its_own_keys(tmp_path):
    with TestClient(_app(tmp_path, _assistants(), server_keys=["key-server"])) as c:
        assert c.get("/health").status_code == 200
        for route in ("/v1/models", "/api/tags", "/metrics"):  # any key opens the lists; none opens nothing
            assert c.get(route).status_code == 401
            assert c.get(route, headers=_bearer("nope")).status_code == 401
            assert c.get(route, headers=_bearer("key-beta")).status_code == 200
        assert _chat(c, "alpha", None).status_code == 401
        assert _chat(c, "alpha", "key-alpha").status_code == 200
        assert _chat(c, "beta", "key-beta").status_code == 200  # the config holds only its sha256 digest
        denied = _chat(c, "beta", "key-alpha")  # alpha's key never opens beta
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        assert _chat(c, "alpha", "key-beta").status_code == 403
        assert _chat(c, "alpha", hash_key("key-alpha")).status_code == 401  # the digest itself is no key
        for model in ("alpha", "beta", "gamma"):  # a server key opens every model
            assert _chat(c, model, "key-server").status_code == 200
        assert _chat(c, "gamma", "key-alpha").status_code == 200  # no keys of its own: any valid key
        # every route that names a model checks it, on both APIs
        h = _bearer("key-alpha")
        assert c.post("/api/chat", json={"model": "beta", "messages": USER}, headers=h).status_code == 403
        assert c.post("/api/generate", json={"model": "beta", "prompt": "x"}, headers=h).status_code == 403
        assert c.post("/api/show", json={"model": "beta"}, headers=h).status_code == 403
        assert c.post("/v1/embeddings", json={"model": "beta", "input": "x"}, headers=h).status_code == 403
        assert c.post("/api/embed", json={"model": "beta", "input": "x"}, headers=h).status_code == 403
        assert c.get("/v1/models/beta", headers=h).status_code == 403
        assert c.post("/api/embed", json={"model": "alpha", "input": "x"}, headers=h).status_code == 200


def test_keys_of_a_built_assistant_hold_without_a_config_argument(tmp_path):
    """`protege serve` with no CONFIG (the edge bundle's launcher) serves $PROTEGE_HOME's assistants with their keys."""
    paths = AssistantPaths.for_name("alpha").ensure()
    save_resolved(config_from_dict({"name": "alpha", "serve": {"api_keys": ["key-alpha"]}}), paths.root)
    with TestClient(_app(tmp_path, [], include_built=True)) as c:
        assert _chat(c, "alpha", None).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert _chat(c, "alpha", "key-alpha").status_code == 200


def test_cli_server_keys_come_from_flags_and_env_only(monkeypatch):
    from protege.cli import build_parser
    from protege.commands.serve import serve_config

    monkeypatch.setenv("PROTEGE_API_KEYS", "env-1, env-2,")
    args = build_parser().parse_args(["serve", "--api-key", "flag-1"])
    cfg = serve_config(args, [config_from_dict({"name": "alpha", "serve": {"api_keys": ["key-alpha"]}})])
    assert cfg.api_keys == ["flag-1", "env-1", "env-2"]  # alpha's key stays alpha's (per assistant, not global)
    args = build_parser().parse_args(["serve", "--keep-alive", "30s", "--max-loaded-models", "3"])
    cfg = serve_config(args, [])
    assert (cfg.keep_alive, cfg.max_loaded_models) == ("30s", 3)


def test_non_loopback_bind_needs_a_key_or_insecure(tmp_path, monkeypatch, capsys):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com", ""))
    check_exposure("127.0.0.1", False, False)
    check_exposure("0.0.0.0", True, False)
    check_exposure("0.0.0.0", False, True)
    with pytest.raises(ConfigError, match="--insecure"):
        check_exposure("0.0.0.0", False, False)

    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    config = tmp_path / "a.yaml"
    config.write_text("name: alpha\n")
    argv = ["serve", str(config), "--no-registry", "--engine", "fake", "--host", "0.0.0.0"]
    assert main(argv) == 2 and not started
    assert "without an API key" in capsys.readouterr().err
    assert main(argv + ["--insecure"]) == 0 and started[-1]["host"] == "0.0.0.0"
    assert main(argv + ["--api-key", "k"]) == 0
    config.write_text("name: alpha\nserve:\n  api_keys: [key-alpha]\n")  # the assistant's own key counts
    assert main(argv) == 0 and len(started) == 3


def test_bad_serve_flags_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "a.yaml"
    config.write_text("name: alpha\n")
    for flag, value, text in [("--parallel", "0", "--parallel: Input should be greater than 0, got 0"),
                              ("--port", "70000", "--port: Input should be less than 65536"),
                              ("--cors-origin", "*", "--cors-origin: '*' is not allowed"),
                              ("--max-queue", "-1", "--max-queue"),
                              ("--keep-alive", "soon", "--keep-alive: keep_alive must be a duration"),
                              ("--max-loaded-models", "0", "--max-loaded-models: Input should be greater than")]:
        assert main(["serve", str(config), "--no-registry", "--engine", "fake", flag, value]) == 2
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err, err


def test_bundle_ships_key_digests_never_keys(tmp_path):
    from export.bundle import build_bundle

    cfg = config_from_dict({"name": "alpha", "serve": {"api_keys": ["key-alpha-secret"]}})
    paths = AssistantPaths.for_name("alpha").ensure()
    paths.gguf.mkdir()
    paths.gguf_file("q8_0").write_bytes(b"GGUF")
    info = build_bundle(cfg, paths)
    bundled = yaml.safe_load((paths.bundle / "home" / "assistants" / "alpha" / "config.yaml").read_text())
    assert bundled["serve"]["api_keys"] == [hash_key("key-alpha-secret")]
    with tarfile.open(info["tarball"]) as tar:
        for m in tar.getmembers():
            if m.isfile():
                assert b"key-alpha-secret" not in tar.extractfile(m).read(), m.name
    assert cfg.serve.api_keys == ["key-alpha-secret"]  # the assistant's own config is untouched
    # the bundled home, served without a CONFIG argument, accepts the key and nothing else
    from protege.config_file import load_config

    served = load_config(paths.bundle / "home" / "assistants" / "alpha" / "config.yaml")
    with TestClient(_app(tmp_path, [served])) as c:
        assert _chat(c, "alpha", "key-alpha-secret").status_code == 200
        assert _chat(c, "alpha", hash_key("key-alpha-secret")).status_code == 401


class _Flaky:
    """An engine factory whose first `fails` loads raise (a transient fault, e.g. a file still being copied)."""

    def __init__(self, fails: int):
        self.fails = fails

    def __call__(self, spec):
        engine = FakeEngine([spec.id])
        if self.fails > 0:
            self.fails -= 1

            async def broken_load():
                raise OSError("/very/secret/path/model.gguf: transient read error")

            engine.load = broken_load
        return engine


def test_health_recovers_after_a_transient_load_failure(tmp_path, monkeypatch):
    monkeypatch.setattr("serve.app.PRELOAD_RETRY", (0.05, 0.2))
    with TestClient(_app(tmp_path, [config_from_dict({"name": "alpha"})], factory=_Flaky(3))) as c:
        seen = []
        deadline = time.time() + 10
        while time.time() < deadline:
            r = c.get("/health")
            seen.append((r.status_code, r.json()))
            if r.status_code == 200:
                break
            time.sleep(0.02)
        assert seen[-1][0] == 200 and seen[-1][1]["status"] == "ok"
        errors = [body for status, body in seen if status == 503 and body["status"] == "error"]
        assert errors and all("secret" not in body["error"] for body in errors)  # no paths on an open route
        assert _chat(c, "alpha", None).status_code == 200


def test_unexpected_errors_are_500_with_an_id_and_no_internals(tmp_path, caplog):
    class Broken(FakeEngine):
        async def stream_chat(self, params, usage=None):
            raise RuntimeError("/very/secret/path: kaboom")
            yield  # pragma: no cover

    app = _app(tmp_path, [config_from_dict({"name": "alpha"})], factory=lambda spec: Broken([spec.id]))
    with caplog.at_level(logging.ERROR, logger="protege.serve"), TestClient(app, raise_server_exceptions=False) as c:
        r = _chat(c, "alpha", None)
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "server_error" and "secret" not in err["message"] and "kaboom" not in err["message"]
        error_id = err["message"].split("(id ")[1].split(")")[0]
        assert any(error_id in rec.getMessage() and rec.exc_info for rec in caplog.records)
        assert _chat(c, "alpha", None).status_code == 500 and c.get("/health").status_code == 200
