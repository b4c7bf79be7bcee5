"""The settings tree: Dynaconf layers validated into one frozen pydantic model.

Layers, lowest first: the shipped `settings.toml`, `~/.mlx-serve/config.yaml`, `MLX_SERVE_*` environment
variables, command-line flags. Nested tables merge; any other value is taken whole from the highest layer
that sets it. Every value remembers the layer it came from, so that errors and `mlx-serve config` can
name it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dynaconf import Dynaconf, get_history
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlx_serve.core.keep_alive import KeepAlive
from mlx_serve.serving.memory import parse_size

DEFAULTS_FILE = Path(__file__).with_name("settings.toml")
ENV_PREFIX = "MLX_SERVE"


def home_dir() -> Path:
    return Path.home() / ".mlx-serve"


class ServiceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    auto_start: bool
    restart_on_failure: bool
    restart_delay: int = Field(ge=0)


class ClusterSettings(BaseModel):
    """Several nodes behind a load balancer: what `mlx-serve cluster render` renders from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: tuple[str, ...]  # host:port of each node
    port: int = Field(ge=1, le=65535)  # the balancer's
    bind: str  # the balancer's address
    check_interval: float = Field(gt=0)  # seconds between health checks of each node

    @field_validator("nodes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    api_key: str
    api_key_file: Path | None
    metrics_public: bool
    allowed_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    client_timeout: float = Field(gt=0, le=3600)
    send_timeout: float = Field(gt=0, le=3600)
    models_dir: Path
    log_level: Literal["debug", "info", "warning", "error"]
    log_format: Literal["auto", "json", "console"]
    log_max_bytes: int = Field(ge=1024)
    cache_max_embedding_models: int = Field(ge=1)
    cache_max_reranker_models: int = Field(ge=1)
    cache_max_classifier_models: int = Field(ge=1)
    keep_alive: KeepAlive
    preload_models: tuple[str, ...]
    preload_pinned: bool
    graceful_timeout: int = Field(ge=0)
    drain_seconds: float = Field(ge=0)
    start_timeout: float = Field(gt=0)
    threads: int = Field(ge=1, le=256)
    mlx_cache_limit: int | None
    max_inflight_bytes: int | None  # None: auto (serving/memory.py's inflight_budget); 0: no bound
    warm_shapes: bool
    mlx_memory_limit: int | None
    mlx_wired_limit: int | None
    dtype: Literal["auto", "float32", "float16", "bfloat16"]
    max_batch_tokens: int | None = Field(ge=64)  # None: auto, chosen for the device
    max_inputs_per_request: int = Field(ge=1)
    max_request_bytes: int = Field(ge=1024)
    request_timeout: float = Field(gt=0)
    preload_timeout: float = Field(gt=0)
    max_queued_requests: int = Field(ge=1)
    auto_truncate: bool
    token_arrays: Literal["cl100k", "model", "reject"]
    pull_timeout: float = Field(gt=0)
    max_concurrent_pulls: int = Field(ge=1)
    model_instructions: dict[str, str]
    model_aliases: dict[str, str]
    default_embedding_model: str
    default_reranker: str
    default_classifier: str
    service: ServiceSettings
    cluster: ClusterSettings

    @field_validator("keep_alive", mode="after")
    @classmethod
    def _given(cls, value: float | None) -> float:
        if value is None:
            raise ValueError('must be a number of seconds or a duration such as "30m"')
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("models_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) and value else value

    @field_validator("preload_models", "allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # The environment gives a comma-separated string.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("model_aliases", "model_instructions", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        # The environment gives a JSON object: MLX_SERVE_MODEL_ALIASES='{"mini": "all-MiniLM-L6-v2"}'.
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError('must be a JSON object, e.g. {"mini": "all-MiniLM-L6-v2"}') from None
        return value

    @field_validator("max_batch_tokens", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator(
        "mlx_cache_limit",
        "mlx_memory_limit",
        "mlx_wired_limit",
        "log_max_bytes",
        "max_inflight_bytes",
        "max_request_bytes",
        mode="before",
    )
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("api_key_file", mode="before")
    @classmethod
    def _key_file(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        path = Path(value).expanduser()
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file: {exc.strerror or exc}") from None
        if not key:
            raise ValueError("the API key file is empty")
        return path

    @property
    def loopback(self) -> bool:
        """Bound to this machine only."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    def resolved_api_key(self) -> str | None:
        """The key clients must send: `api_key`, else the contents of `api_key_file`, else none."""
        if self.api_key:
            return self.api_key
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return None


class SettingsError(Exception):
    """Bad configuration: the message names each key, its value and the layer it came from."""

    def __init__(self, message: str, fallback: LoadedSettings | None = None) -> None:
        super().__init__(message)
        # The settings with each bad value (or a config.yaml that cannot be read) left out, so that the
        # commands that show what is wrong (config, status, list, stop) can still run.
        self.fallback = fallback


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    origins: dict[str, str]  # dotted key -> layer: "defaults", a config.yaml path, an env var, "cli"
    values: dict[str, Any]  # dotted key -> effective value as configured
    # dotted key -> (value, layer) of each setting left out as invalid (only in SettingsError.fallback)
    invalid: dict[str, tuple[Any, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # settings set under an old name


def env_var(key: str) -> str:
    return f"{ENV_PREFIX}_{key.upper().replace('.', '__')}"


# Old names that still work for a release, with a warning naming the new one.
RENAMED = {"cache_ttl_seconds": "keep_alive"}

# Dict settings may also come one entry per variable, the entry's name as written (names are case-sensitive):
# MLX_SERVE_MODEL_ALIASES__mini=all-MiniLM-L6-v2.
DICT_SETTINGS = ("model_aliases", "model_instructions")


def load_settings(
    cli: dict[str, Any] | None = None, config_file: Path | None = None, *, _skip_file: bool = False
) -> LoadedSettings:
    """Layer, validate and freeze. `cli` maps dotted keys to flag values (None = flag not given).

    Bad settings raise SettingsError, whose `fallback` is the tree without them (see SettingsError)."""
    config_file = config_file or home_dir() / "config.yaml"
    use_file = config_file.exists() and not _skip_file
    files = [str(DEFAULTS_FILE)] + ([str(config_file)] if use_file else [])
    try:
        dyn = Dynaconf(
            envvar_prefix=ENV_PREFIX,
            settings_files=files,
            environments=False,
            load_dotenv=False,
            merge_enabled=True,  # nested tables merge; leaves are resolved from history below
            ignore_unknown_envvars=True,  # only keys the defaults define; MLX_SERVE_BLAS etc. are not settings
            core_loaders=["TOML", "YAML"],
        )
        for key, value in (cli or {}).items():
            if value is not None:
                dyn.set(key, value, loader_identifier="cli", merge=False)
        raw = {k.lower(): v for k, v in dyn.as_dict().items() if k.lower() in Settings.model_fields}
        unknown = _unknown_keys(dyn, config_file) if use_file else []
    except Exception as exc:  # a YAML or TOML syntax error: name the file
        message = f"settings: could not read {config_file}: {exc}"
        raise SettingsError(message, _without_file(cli, config_file, message, _skip_file)) from exc

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in _leaf_keys(Settings):
        found = _resolve(dyn, key)
        if found is not None:
            values[key], origins[key] = found
            _assign(raw, key, values[key])
    _dict_entries_from_env(raw, values, origins)
    warnings = _renamed(dyn, raw, values, origins, config_file if use_file else None)
    unknown = [k for k in unknown if k not in RENAMED]
    problems = [f"settings: unknown key {k!r} in {config_file}" for k in unknown]
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.append(_describe(exc, values, origins))
        bad = {".".join(str(p) for p in err["loc"] if not isinstance(p, int)) for err in exc.errors()}
        raise SettingsError("\n".join(problems), _fallback(raw, values, origins, bad)) from None
    loaded = LoadedSettings(settings, origins, values, warnings=tuple(warnings))
    if problems:
        raise SettingsError("\n".join(problems), loaded)
    return loaded


def _renamed(
    dyn: Dynaconf, raw: dict[str, Any], values: dict[str, Any], origins: dict[str, str], config_file: Path | None
) -> list[str]:
    """Settings set under an old name (config.yaml or MLX_SERVE_<OLD>) count, unless the new name is set in
    a layer as high; each gives a warning naming the new name."""
    warnings = []
    for old, new in RENAMED.items():
        found: tuple[Any, str] | None = None
        if (value := os.environ.get(env_var(old))) is not None:
            found = (value, f"env {env_var(old)}")
        elif config_file is not None and dyn.get(old.upper()) is not None:
            found = (dyn.get(old.upper()), str(config_file))
        if found is None:
            continue
        warnings.append(f"settings: {old} is now called {new} ({found[1]}); the old name works for this release")
        if _rank(origins.get(new, "defaults")) < _rank(found[1]):
            raw[new] = values[new] = found[0]
            origins[new] = found[1]
    return warnings


def _rank(origin: str) -> int:
    """A layer's height: the defaults, then config.yaml, the environment, the command line."""
    if origin == "defaults":
        return 0
    return 3 if origin == "cli" else 2 if origin.startswith("env") else 1


def _dict_entries_from_env(raw: dict[str, Any], values: dict[str, Any], origins: dict[str, str]) -> None:
    for key in DICT_SETTINGS:
        prefix = f"{env_var(key)}__"
        entries = {name[len(prefix) :]: v for name, v in os.environ.items() if name.startswith(prefix)}
        if entries:
            base = raw.get(key)
            if isinstance(base, str):  # the JSON form as well
                try:
                    base = json.loads(base)
                except ValueError:
                    continue  # left as it is, for the validator to name
            merged = {**(base if isinstance(base, dict) else {}), **entries}
            raw[key] = values[key] = merged
            origins[key] = f"env {prefix}*"


def _without_file(cli: dict[str, Any] | None, config_file: Path, message: str, skipped: bool) -> LoadedSettings | None:
    if skipped:
        return None
    try:
        return load_settings(cli, config_file, _skip_file=True)
    except SettingsError as exc:
        return exc.fallback


def _fallback(
    raw: dict[str, Any], values: dict[str, Any], origins: dict[str, str], bad: set[str]
) -> LoadedSettings | None:
    """The tree with each bad key at its shipped default."""
    defaults = _defaults()
    invalid = {key: (values.get(key), origins.get(key, "defaults")) for key in bad}
    for key in bad:
        value: Any = defaults
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        _assign(raw, key, value)
        values[key] = value
        origins[key] = "defaults (the value set is invalid)"
    try:
        return LoadedSettings(Settings.model_validate(raw), origins, values, invalid)
    except ValidationError:
        return None


def _defaults() -> dict[str, Any]:
    dyn = Dynaconf(settings_files=[str(DEFAULTS_FILE)], environments=False, load_dotenv=False, envvar_prefix=False)
    return {k.lower(): _lower_keys(v) for k, v in dyn.as_dict().items()}


def _lower_keys(value: Any) -> Any:
    return {k.lower(): v for k, v in value.items()} if isinstance(value, dict) else value


def effective_values(settings: Settings) -> dict[str, Any]:
    """Dotted key -> value (JSON types), for every leaf of the tree; dict-valued settings stay whole."""
    dumped = settings.model_dump(mode="json")
    out = {}
    for key in _leaf_keys(Settings):
        value: Any = dumped
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _leaf_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _resolve(dyn: Dynaconf, key: str) -> tuple[Any, str] | None:
    """The value of a leaf and its layer: the last layer whose value for it differs from the one before.

    Merged history entries of a nested table repeat earlier values for leaves that layer did not set, so
    an unchanged value is not counted as set again.
    """
    found: tuple[Any, str] | None = None
    for entry in get_history(dyn, key):
        value = entry["value"]
        if found is None or not entry.get("merged") or value != found[0]:
            found = (value, _layer_name(entry, key))
    return found


def _layer_name(entry: dict[str, Any], key: str) -> str:
    loader, ident = entry["loader"], str(entry["identifier"])
    if loader == "toml" and Path(ident).resolve() == DEFAULTS_FILE.resolve():
        return "defaults"
    if loader.startswith("env"):
        return f"env {env_var(key)}"
    return ident  # "cli", or the config file's path


def _unknown_keys(dyn: Dynaconf, config_file: Path) -> list[str]:
    unknown = []
    for entry in get_history(dyn):
        if entry["loader"] == "yaml" and isinstance(entry["value"], dict):
            for k, v in entry["value"].items():
                if k.lower() not in Settings.model_fields:
                    unknown.append(k.lower())
                elif k.lower() in ("service", "cluster") and isinstance(v, dict):
                    fields = (ServiceSettings if k.lower() == "service" else ClusterSettings).model_fields
                    unknown += [f"{k.lower()}.{sub}" for sub in v if sub.lower() not in fields]
    return sorted(set(unknown))


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _describe(exc: ValidationError, values: dict[str, Any], origins: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        origin = origins.get(key, "defaults")
        shown = repr(values[key]) if key in values else "(missing)"
        lines.append(f"settings: {key} = {shown} (from {origin}): {err['msg']}")
    return "\n".join(lines)
