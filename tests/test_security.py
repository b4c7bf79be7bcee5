"""Who may drive the server: the API key, browser origins (CORS), Host names (DNS rebinding), and what
an HTTP client learns of this machine's paths. The checks are the app's: they run over the fake service."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import MINILM, run_cli
from .fake_service import EMBEDDER


def embed(client, headers: dict | None = None):
    return client.simulate_post("/v1/embeddings", json={"model": EMBEDDER, "input": "hi"}, headers=headers or {})


def test_an_api_key_guards_every_route_but_health(make_fake) -> None:
    client = make_fake(api_key="s3cret").client
    refused = embed(client)
    assert refused.status_code == 401 and refused.json["error"]["code"] == "invalid_api_key"
    assert refused.json["error"]["type"] == "authentication_error"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert embed(client, {"Authorization": "Bearer wrong"}).status_code == 401
    assert embed(client, {"Authorization": "Basic s3cret"}).status_code == 401
    assert embed(client, {"Authorization": "Bearer s3cret"}).status_code == 200
    assert embed(client, {"Authorization": "bearer s3cret"}).status_code == 200  # the scheme is case-free
    for path in ("/v1/models", "/api/ps", "/api/tags", "/openapi.json/../api/ps"):
        assert client.simulate_get(path).status_code in (401, 404)
    assert client.simulate_post("/api/pull", json={"model": "/etc"}).status_code == 401
    assert client.simulate_get("/health").status_code == 200
    assert client.simulate_get("/metrics").status_code == 200  # metrics_public is true by default


def test_a_non_ascii_key_works_from_a_utf8_client(make_fake) -> None:
    key = "schlüssel-ключ"
    client = make_fake(api_key=key).client
    # A UTF-8 client's bytes, as WSGI hands header values over: one latin-1 character per byte.
    as_sent = "Bearer " + key.encode("utf-8").decode("latin-1")
    assert embed(client, {"Authorization": as_sent}).status_code == 200
    assert embed(client, {"Authorization": "Bearer " + key.encode("utf-8").decode("latin-1")[:-1]}).status_code == 401


def test_metrics_need_the_key_unless_public(make_fake) -> None:
    client = make_fake(api_key="k", metrics_public="false").client
    assert client.simulate_get("/metrics").status_code == 401
    assert client.simulate_get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def test_the_key_can_come_from_a_file(make_fake, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    client = make_fake(api_key_file=str(key_file)).client
    assert embed(client).status_code == 401
    assert embed(client, {"Authorization": "Bearer from-a-file"}).status_code == 200


def test_an_unreadable_key_file_stops_start_up(make_fake, tmp_path: Path) -> None:
    from mlx_serve.settings import SettingsError

    with pytest.raises(SettingsError, match="api_key_file"):
        make_fake(api_key_file=str(tmp_path / "missing"))


def test_a_foreign_browser_origin_is_refused_even_for_simple_requests(make_fake) -> None:
    client = make_fake().client
    # A text/plain POST: what any web page can send without a CORS preflight.
    result = client.simulate_post(
        "/api/unload",
        body='{"name": "fake-embed"}',
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert result.status_code == 403 and result.json["code"] == "forbidden_origin"
    assert client.simulate_get("/api/ps", headers={"Origin": "null"}).status_code == 403
    assert embed(client).status_code == 200  # no Origin: not a browser's cross-site request


def test_allowed_origins_get_cors_headers_and_a_preflight(make_fake) -> None:
    client = make_fake(allowed_origins="https://app.example").client
    ok = embed(client, {"Origin": "https://app.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    preflight = client.simulate_options(
        "/v1/embeddings",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert embed(client, {"Origin": "https://other.example"}).status_code == 403


def test_dns_rebinding_is_refused_on_a_loopback_bind(make_fake) -> None:
    client = make_fake().client
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "api.localhost"):
        assert embed(client, {"Host": host}).status_code == 200, host
    rebound = embed(client, {"Host": "attacker.example:8000"})
    assert rebound.status_code == 403 and rebound.json["error"]["code"] == "forbidden_host"
    proxied = make_fake(allowed_hosts="embed.internal").client
    assert embed(proxied, {"Host": "embed.internal"}).status_code == 200


def test_a_network_bind_answers_any_host_name(make_fake) -> None:
    client = make_fake(host="0.0.0.0").client
    assert embed(client, {"Host": "my-mac.lan:8000"}).status_code == 200


def test_show_reveals_no_absolute_path(make_app, minilm_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "private" / "my-model"
    shutil.copytree(minilm_dir, folder)
    app = make_app(models={"mine": folder})
    shown = app.client.simulate_post("/api/show", json={"name": "mine"}).json
    assert shown["path"] == "mine" and shown["source"] == "folder:my-model"
    builtin = app.client.simulate_post("/api/show", json={"name": MINILM}).json
    assert builtin["path"] is None
    assert str(tmp_path) not in app.client.simulate_post("/api/show", json={"name": "mine"}).text


@pytest.mark.process
def test_config_never_prints_the_key(home: Path) -> None:
    out = run_cli(home, "config", env={"MLX_SERVE_API_KEY": "hunter2"})
    assert out.returncode == 0 and "hunter2" not in out.stdout and "(set, not shown)" in out.stdout


@pytest.mark.process
def test_a_network_bind_without_a_key_warns_what_is_exposed(start_server) -> None:
    server = start_server("--host", "0.0.0.0")
    assert server.stop() == 0
    (warning,) = [line for line in server.logs() if line["event"] == "exposed_without_api_key"]
    assert "pull models" in warning["exposed"] and warning["level"] == "warning"
    assert "warning: 0.0.0.0 with no api_key" in server.log.read_text()  # in start's own output too
