"""Settings layers, their precedence and origins, and a bad value in each layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_serve.settings import SettingsError, load_settings

from .conftest import run_cli


def write_config(home: Path, text: str) -> Path:
    path = home / ".mlx-serve" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_with_an_empty_home(home: Path) -> None:
    loaded = load_settings()
    s = loaded.settings
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.models_dir == home / ".mlx-serve" / "models"
    assert (s.cache_max_embedding_models, s.cache_max_reranker_models, s.keep_alive) == (3, 2, 1800)
    assert s.preload_models == ()
    assert (s.service.auto_start, s.service.restart_on_failure, s.service.restart_delay) == (False, True, 5)
    assert s.graceful_timeout == 30
    assert set(loaded.origins.values()) == {"defaults"}


def test_each_layer_overrides_the_one_below(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(
        home,
        "port: 9001\nhost: 0.0.0.0\nlog_level: WARNING\nservice:\n  restart_delay: 7\n"
        "preload_models: [from-yaml]\nkeep_alive: -1\n",
    )
    monkeypatch.setenv("MLX_SERVE_HOST", "127.0.0.2")
    monkeypatch.setenv("MLX_SERVE_SERVICE__AUTO_START", "true")
    monkeypatch.setenv("MLX_SERVE_PRELOAD_MODELS", "a, b")
    loaded = load_settings(cli={"port": 9100, "log_level": None})
    s = loaded.settings
    assert s.port == 9100 and loaded.origins["port"] == "cli"
    assert s.host == "127.0.0.2" and loaded.origins["host"] == "env MLX_SERVE_HOST"
    assert s.log_level == "warning" and loaded.origins["log_level"] == str(config)
    assert s.service.restart_delay == 7 and loaded.origins["service.restart_delay"] == str(config)
    # A nested env var and a nested yaml key merge rather than replace each other.
    assert s.service.auto_start is True and loaded.origins["service.auto_start"] == "env MLX_SERVE_SERVICE__AUTO_START"
    assert s.service.restart_on_failure is True and loaded.origins["service.restart_on_failure"] == "defaults"
    # Lists are replaced by the higher layer, not appended to.
    assert s.preload_models == ("a", "b")
    assert s.keep_alive == -1


def test_cli_list_replaces_the_environment_list(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SERVE_PRELOAD_MODELS", '["x", "y"]')
    assert load_settings().settings.preload_models == ("x", "y")
    assert load_settings(cli={"preload_models": ["z"]}).settings.preload_models == ("z",)


def test_settings_are_frozen(home: Path) -> None:
    settings = load_settings().settings
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_bad_value_in_config_yaml_names_key_value_and_file(home: Path) -> None:
    config = write_config(home, "port: 70000\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "port = 70000" in str(err.value) and str(config) in str(err.value)


def test_bad_nested_value_in_config_yaml(home: Path) -> None:
    write_config(home, "service:\n  restart_delay: soon\n")
    with pytest.raises(SettingsError, match=r"service\.restart_delay = 'soon'"):
        load_settings()


def test_bad_value_in_environment_names_the_variable(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SERVE_CACHE_MAX_EMBEDDING_MODELS", "lots")
    with pytest.raises(
        SettingsError, match=r"cache_max_embedding_models = 'lots' \(from env MLX_SERVE_CACHE_MAX_EMBEDDING_MODELS\)"
    ):
        load_settings()


def test_bad_value_on_the_command_line(home: Path) -> None:
    with pytest.raises(SettingsError, match=r"port = 0 \(from cli\)"):
        load_settings(cli={"port": 0})


def test_bad_value_in_shipped_defaults_is_reported_as_defaults(home: Path, tmp_path: Path, monkeypatch) -> None:
    import mlx_serve.settings as mod

    broken = tmp_path / "settings.toml"
    broken.write_text(mod.DEFAULTS_FILE.read_text().replace('log_level = "info"', 'log_level = "loud"'))
    monkeypatch.setattr(mod, "DEFAULTS_FILE", broken)
    with pytest.raises(SettingsError, match=r"log_level = 'loud' \(from defaults\)"):
        load_settings()


def test_unknown_key_in_config_yaml(home: Path) -> None:
    write_config(home, "prot: 8000\nservice:\n  auto_strat: true\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "'prot'" in str(err.value) and "'service.auto_strat'" in str(err.value)


def test_unreadable_config_yaml_names_the_file(home: Path) -> None:
    config = write_config(home, "port: [unclosed\n")
    with pytest.raises(SettingsError, match=str(config)):
        load_settings()


@pytest.mark.process
def test_config_json_maps_each_key_to_value_and_origin(home: Path) -> None:
    config = write_config(home, "keep_alive: 60\n")
    out = run_cli(home, "config", "--json", env={"MLX_SERVE_PORT": "8123"})
    assert out.returncode == 0, out.stderr
    tree = json.loads(out.stdout)
    assert tree["port"] == {"value": 8123, "origin": "env MLX_SERVE_PORT"}
    assert tree["keep_alive"] == {"value": 60, "origin": str(config)}
    assert tree["host"] == {"value": "127.0.0.1", "origin": "defaults"}
    assert tree["service.restart_delay"] == {"value": 5, "origin": "defaults"}


@pytest.mark.process
def test_config_prints_a_table_with_origins(home: Path) -> None:
    out = run_cli(home, "config", env={"MLX_SERVE_LOG_LEVEL": "debug"})
    assert out.returncode == 0
    line = next(line for line in out.stdout.splitlines() if line.startswith("log_level"))
    assert '"debug"' in line and "env MLX_SERVE_LOG_LEVEL" in line
    rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.strip()}
    # As the README's table writes them, not as parsed (null, 1800).
    assert rows["max_batch_tokens"] == rows["mlx_memory_limit"] == '"auto"' and rows["keep_alive"] == '"30m"'


@pytest.mark.process
def test_bad_setting_stops_start_with_exit_code_78(home: Path) -> None:
    write_config(home, "graceful_timeout: -5\n")
    out = run_cli(home, "start", "--foreground")
    assert out.returncode == 78  # EX_CONFIG: the systemd unit does not restart on it
    assert "graceful_timeout = -5" in out.stderr and "config.yaml" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("port: 70000\n", "port = 70000"),
        ("port: [unclosed\n", "could not read"),
        ("prot: 8001\n", "unknown key 'prot'"),
    ],
)
def test_bad_settings_leave_the_diagnostic_commands_working(home: Path, config: str, words: str) -> None:
    """The commands that show what is wrong still run (on the settings without the bad ones); start refuses."""
    write_config(home, config)
    shown = run_cli(home, "config")
    assert shown.returncode == 2 and words in shown.stderr
    assert "port" in shown.stdout and "Traceback" not in shown.stderr
    as_json = run_cli(home, "config", "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["port"]["value"] == 8000
    status = run_cli(home, "status")
    assert status.returncode == 3 and "stopped" in status.stdout and words in status.stderr  # LSB: not running
    for args in (["list"], ["stop", "--all"]):
        out = run_cli(home, *args)
        assert out.returncode == 0 and words in out.stderr, args
    start = run_cli(home, "start")
    assert start.returncode == 78 and words in start.stderr


@pytest.mark.process
def test_config_names_the_invalid_value_and_its_layer(home: Path) -> None:
    write_config(home, "port: 70000\n")
    out = json.loads(run_cli(home, "config", "--json").stdout)
    assert out["port"]["invalid"] == {"value": 70000, "origin": str(home / ".mlx-serve" / "config.yaml")}
    assert out["port"]["origin"] == "defaults (the value set is invalid)"


def test_dict_settings_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SERVE_MODEL_ALIASES", '{"mini": "all-MiniLM-L6-v2"}')
    assert load_settings().settings.model_aliases == {"mini": "all-MiniLM-L6-v2"}
    # One entry per variable, the entry's name as written (model names are case-sensitive).
    monkeypatch.setenv("MLX_SERVE_MODEL_ALIASES__Small", "all-MiniLM-L6-v2")
    loaded = load_settings()
    assert loaded.settings.model_aliases == {"mini": "all-MiniLM-L6-v2", "Small": "all-MiniLM-L6-v2"}
    assert loaded.origins["model_aliases"] == "env MLX_SERVE_MODEL_ALIASES__*"
    monkeypatch.setenv("MLX_SERVE_MODEL_ALIASES", "{mini: oops")
    with pytest.raises(SettingsError, match="JSON object"):
        load_settings()


def test_keep_alive_takes_durations_and_its_old_name_with_a_warning(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One keep-alive, parsed one way for the setting and for a request: "10m" works in both."""
    write_config(home, 'keep_alive: "1h30m"\n')
    loaded = load_settings()
    assert loaded.settings.keep_alive == 5400 and loaded.warnings == ()
    write_config(home, "cache_ttl_seconds: 120\n")  # the old name, in config.yaml
    loaded = load_settings()
    assert loaded.settings.keep_alive == 120
    (warning,) = loaded.warnings
    assert "cache_ttl_seconds is now called keep_alive" in warning and "config.yaml" in warning
    monkeypatch.setenv("MLX_SERVE_CACHE_TTL_SECONDS", "-5")  # and in the environment, a higher layer
    loaded = load_settings()
    assert loaded.settings.keep_alive == -1 and loaded.origins["keep_alive"] == "env MLX_SERVE_CACHE_TTL_SECONDS"
    monkeypatch.setenv("MLX_SERVE_KEEP_ALIVE", "10m")  # the new name in the same layer wins
    assert load_settings().settings.keep_alive == 600
    with pytest.raises(SettingsError, match="keep_alive"):
        load_settings(cli={"keep_alive": "5x"})


@pytest.mark.process
def test_an_old_setting_name_is_named_on_every_command(home: Path) -> None:
    write_config(home, "cache_ttl_seconds: 120\n")
    out = run_cli(home, "config", "--json")
    assert out.returncode == 0 and "cache_ttl_seconds is now called keep_alive" in out.stderr
    assert json.loads(out.stdout)["keep_alive"]["value"] == 120


def test_byte_sizes_take_units_as_the_readme_writes_them(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SERVE_MAX_REQUEST_BYTES", "10MiB")
    monkeypatch.setenv("MLX_SERVE_MAX_INFLIGHT_BYTES", "1.5GiB")
    settings = load_settings().settings
    assert settings.max_request_bytes == 10 * 2**20 and settings.max_inflight_bytes == 1536 * 2**20
    monkeypatch.setenv("MLX_SERVE_MAX_INFLIGHT_BYTES", "auto")
    assert load_settings().settings.max_inflight_bytes is None
