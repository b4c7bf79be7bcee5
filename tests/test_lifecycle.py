"""start / stop / status with real processes, real signals and real PID files."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mlx_serve.process import lifecycle
from mlx_serve.process.lifecycle import PidRecord, pid_file

from .conftest import MINILM, free_port, run_cli

pytestmark = pytest.mark.process
cli = run_cli


def state(home: Path) -> Path:
    return home / ".mlx-serve"


@pytest.fixture
def cleanup(home: Path) -> Iterator[None]:
    """Whatever a test starts is stopped, even when it fails."""
    yield
    cli(home, "stop", "--all", "--force", "--now")


STATUS_KEYS = {"port", "state", "pid", "url", "uptime_seconds", "memory_bytes", "models_loaded"}
STATUS_KEYS |= {"mlx_memory", "healthy", "manager", "reason"}


def status_json(home: Path, port: int) -> tuple[int, dict]:
    """`status --port P --json`: a list (one shape, with --port or without), of rows with every field."""
    out = cli(home, "status", "--port", str(port), "--json")
    rows = json.loads(out.stdout)
    assert isinstance(rows, list) and len(rows) == 1 and set(rows[0]) == STATUS_KEYS
    return out.returncode, rows[0]


def test_start_status_refuse_second_start_stop(home: Path, cleanup) -> None:
    port = free_port()
    started = cli(home, "start", "--port", str(port))
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}" in started.stdout

    code, row = status_json(home, port)
    assert code == 0 and row["state"] == "running" and row["healthy"] is True
    assert row["url"] == f"http://127.0.0.1:{port}" and row["memory_bytes"] > 0
    record = json.loads(pid_file(state(home), port).read_text())
    assert record["pid"] == row["pid"] and record["port"] == port
    assert psutil.Process(row["pid"]).is_running()
    # The state directory is private to the user.
    assert (state(home).stat().st_mode & 0o777) == 0o700
    assert (state(home) / "logs" / f"mlx-serve-{port}.log").exists()

    second = cli(home, "start", "--port", str(port))
    assert second.returncode == 69 and "already running" in second.stderr  # EX_UNAVAILABLE: no restart

    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/v1/embeddings", data=json.dumps({"model": MINILM, "input": "hi"}).encode()
    ) as resp:
        assert resp.status == 200
    assert status_json(home, port)[1]["models_loaded"] == [MINILM]

    stopped = cli(home, "stop", "--port", str(port))
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_file(state(home), port).exists()
    assert not psutil.pid_exists(row["pid"]) or psutil.Process(row["pid"]).status() == psutil.STATUS_ZOMBIE
    code, row = status_json(home, port)
    assert code == 3 and row["state"] == "stopped" and row["pid"] is None


def test_two_ports_at_once_are_independent(home: Path, cleanup) -> None:
    ports = [free_port(), free_port()]
    for port in ports:
        assert cli(home, "start", "--port", str(port)).returncode == 0
    out = cli(home, "status", "--json")
    assert out.returncode == 0
    rows = {row["port"]: row for row in json.loads(out.stdout)}
    assert set(rows) == set(ports) and all(r["state"] == "running" for r in rows.values())
    assert all(set(r) == STATUS_KEYS for r in rows.values())

    assert cli(home, "stop", "--port", str(ports[0])).returncode == 0
    assert status_json(home, ports[0])[0] == 3
    assert status_json(home, ports[1])[0] == 0
    assert cli(home, "stop", "--all").returncode == 0
    assert status_json(home, ports[1])[0] == 3


def test_kill_9_leaves_a_stale_pid_file_that_status_reports_and_start_cleans(home: Path, cleanup) -> None:
    port = free_port()
    assert cli(home, "start", "--port", str(port)).returncode == 0
    pid = status_json(home, port)[1]["pid"]
    server = psutil.Process(pid)
    for proc in [server, *server.children(recursive=True)]:
        proc.kill()
    psutil.wait_procs([server], timeout=10)

    code, row = status_json(home, port)
    assert code == 1 and row["state"] == "stale"
    again = cli(home, "start", "--port", str(port))
    assert again.returncode == 0, again.stderr
    assert "stale" in again.stderr
    assert status_json(home, port)[0] == 0


@pytest.mark.parametrize("reuse", ["other program", "pid reused"])
def test_pid_file_naming_an_unrelated_live_process_is_stale_and_never_killed(home: Path, reuse: str) -> None:
    port = free_port()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        started = psutil.Process(bystander.pid).create_time()
        if reuse == "pid reused":  # same PID, but a process that started later than the one recorded
            started -= 1000
        state(home).mkdir(parents=True)
        record = PidRecord(bystander.pid, port, "127.0.0.1", started)
        pid_file(state(home), port).write_text(json.dumps(record.__dict__))

        code, row = status_json(home, port)
        assert code == 1 and row["state"] == "stale"
        out = cli(home, "stop", "--port", str(port), "--force")
        assert out.returncode == 0 and "stale" in out.stdout
        assert bystander.poll() is None, "stop must never signal a process that is not the server"
        assert not pid_file(state(home), port).exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_sigterm_lets_an_in_flight_request_finish(home: Path, start_server) -> None:
    server = start_server()
    url = server.url
    # Warm the model, so the long request below is all inference.
    body = json.dumps({"model": MINILM, "input": "warm"}).encode()
    urllib.request.urlopen(f"{url}/v1/embeddings", data=body, timeout=60).read()

    result: dict = {}

    def long_request() -> None:
        texts = [f"{i} " + "a long text about many things " * 60 for i in range(48)]
        data = json.dumps({"model": MINILM, "input": texts}).encode()
        with urllib.request.urlopen(f"{url}/v1/embeddings", data=data, timeout=120) as resp:
            result["status"] = resp.status
            result["n"] = len(json.load(resp)["data"])

    client = threading.Thread(target=long_request)
    client.start()
    time.sleep(1.0)  # the request is on the inference thread now
    server.proc.send_signal(signal.SIGTERM)
    client.join(timeout=120)
    assert result == {"status": 200, "n": 48}
    assert server.proc.wait(timeout=60) == 0
    assert not pid_file(state(home), server.port).exists()
    # And it no longer accepts connections.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


def test_a_server_that_cannot_start_fails_start_with_the_log_tail(home: Path) -> None:
    port = free_port()
    out = cli(home, "start", "--port", str(port), "--preload", "no-such-model")
    assert out.returncode != 0
    assert "no-such-model" in out.stderr and "mlx-serve-" in out.stderr
    assert not pid_file(state(home), port).exists()
    assert status_json(home, port)[0] == 3


def test_a_failed_preload_is_one_json_line_and_the_server_stops(home: Path, start_server) -> None:
    """Every log line is JSON when the format is JSON: no traceback, no bare line for an ordinary failure."""
    server = start_server("--preload", "no-such-model", wait=False)
    assert server.proc.wait(timeout=60) != 0
    lines = server.log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]
    failed = [r for r in server.logs() if r["event"] == "preload_failed"]
    assert len(failed) == 1 and "no-such-model" in failed[0]["error"]
    assert not any("exception" in r or "Traceback" in r["event"] for r in server.logs())
    assert sum("Booting worker" in r["event"] for r in server.logs()) == 1  # stopped, not rebooted


def test_preload_has_its_own_timeout(home: Path, start_server) -> None:
    """A request_timeout shorter than a load no longer fails preloads; preload_timeout bounds them."""
    server = start_server("--preload", MINILM, env={"MLX_SERVE_REQUEST_TIMEOUT": "0.001"})
    assert MINILM in server.wait_healthy()["models_loaded"]
    server.stop()
    slow = start_server("--preload", MINILM, env={"MLX_SERVE_PRELOAD_TIMEOUT": "0.001"}, wait=False)
    assert slow.proc.wait(timeout=60) != 0
    failed = [r for r in slow.logs() if r["event"] == "preload_failed"]
    assert failed and "preload_timeout" in failed[0]["error"]


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_a_port_taken_by_another_program(home: Path, address: str) -> None:
    """Refused with exit 69 (a code the systemd unit does not restart on), naming the holder: also when it
    listens on the wildcard address, which a bind to 127.0.0.1 alone does not notice on macOS."""
    with socket.socket() as other:
        other.bind((address, 0))
        other.listen()
        port = other.getsockname()[1]
        for args in (["start"], ["start", "--foreground"]):
            out = cli(home, *args, "--port", str(port))
            assert out.returncode == 69
            assert f"port {port}" in out.stderr and "in use by" in out.stderr
            assert f"(PID {os.getpid()}, listening on {address})" in out.stderr
            assert "Traceback" not in out.stderr


def test_lsof_names_the_listener_where_psutil_may_not_look() -> None:
    """macOS: psutil.net_connections needs root there, so the holder comes from lsof."""
    with socket.socket() as other:
        other.bind(("0.0.0.0", 0))
        other.listen()
        port = other.getsockname()[1]
        assert lifecycle._lsof_listener(port) == f"{psutil.Process().name()} (PID {os.getpid()})"
    assert lifecycle._lsof_listener(port) is None


def test_stop_without_a_server_says_so(home: Path) -> None:
    out = cli(home, "stop", "--port", str(free_port()))
    assert out.returncode == 0 and "not running" in out.stdout


def test_slow_path_warnings_name_the_real_cause(home: Path, start_server) -> None:
    """A bad MLX_SERVE_BLAS path, or flags g++ refuses, are not a missing library or compiler."""
    env = {"MLX_SERVE_BLAS": "/nowhere/libopenblas.so.0", "MLX_SERVE_JIT_FLAGS": "-mno-such-flag-here"}
    server = start_server(env=env)
    assert server.stop() == 0
    events = {r["event"]: r for r in server.logs()}
    blas, kernels = events["slow_blas"], events["slow_kernels"]
    assert "/nowhere/libopenblas.so.0: no such file" in blas["reason"] and "apt-get" not in blas["hint"]
    assert "-mno-such-flag-here" in kernels["hint"] and "install a C++ compiler" not in kernels["hint"]


def test_stop_flags_mean_what_they_say(home: Path, cleanup) -> None:
    both = cli(home, "stop", "--port", "8123", "--all")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    port = free_port()
    assert cli(home, "start", "--port", str(port)).returncode == 0
    now = cli(home, "stop", "--port", str(port), "--now")  # implies --force: SIGKILL at once
    assert now.returncode == 0 and "killed" in now.stdout


def test_ps_and_unload_find_the_only_running_server_without_a_port(home: Path, cleanup) -> None:
    port = free_port()  # not the port setting (8000)
    assert cli(home, "start", "--port", str(port), "--preload", MINILM).returncode == 0
    ps = cli(home, "ps", "--json")
    assert ps.returncode == 0 and [m["name"] for m in json.loads(ps.stdout)] == [MINILM]
    unload = cli(home, "unload", MINILM)
    assert unload.returncode == 0 and "unloading" in unload.stdout
    other = free_port()
    assert cli(home, "start", "--port", str(other)).returncode == 0
    several = cli(home, "ps")
    assert several.returncode == 3 and "--port" in several.stderr and str(other) in several.stderr
    assert cli(home, "stop", "--all").returncode == 0
    none = cli(home, "ps")
    assert none.returncode == 3 and "no server is running" in none.stderr


def test_show_of_the_built_in_model_says_it_was_never_pulled(home: Path) -> None:
    from mlx_serve.store.store import builtin_model_dir

    shown = json.loads(cli(home, "show", MINILM, "--json").stdout)
    assert shown["pulled_at"] is None
    assert shown["created"] == int(builtin_model_dir().stat().st_mtime)  # the package's files, not "now"
    text = cli(home, "show", MINILM).stdout
    assert "None" not in text and "pulled_at" in text
    # For people, times read as times and sizes as sizes (--json keeps the raw values).
    created = dt.datetime.fromtimestamp(shown["created"], dt.timezone.utc).isoformat(timespec="seconds")
    assert f"created       {created}" in text and f"MB ({shown['size']} bytes)" in text
