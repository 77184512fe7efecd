"""Settings (PROTOCOL.md, "Configuration"): what is accepted and how it is normalised, and that
a setting that cannot work stops the service at start with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import _CONTRACT_VARS, PYTHON, ROOT, Service, free_port, openai_env

from streaming.settings import Settings, SettingsError, startup_warnings

SECRET = "sk-live-DO-NOT-LOG-0123456789"


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        pytest.param({"API_KEYS": ","}, "API_KEYS", id="keys-comma"),
        pytest.param({"API_KEYS": f"{SECRET},,b"}, "API_KEYS", id="keys-double-comma"),
        pytest.param({"API_KEYS": f"{SECRET},"}, "API_KEYS", id="keys-trailing-comma"),
        pytest.param({"API_KEYS": f" ,{SECRET}"}, "API_KEYS", id="keys-blank-entry"),
        pytest.param({"API_KEYS": "   "}, "API_KEYS", id="keys-blank"),
        pytest.param({"API_KEYS": ""}, "API_KEYS", id="keys-empty"),
        pytest.param({"API_KEYS": f"{SECRET}\u00e9"}, "API_KEYS", id="keys-not-ascii"),
        pytest.param({"OPENAI_API_KEY": " "}, "OPENAI_API_KEY", id="openai-key-blank"),
        pytest.param({"LLM_PROVIDER": "opnai"}, "LLM_PROVIDER", id="unknown-provider"),
        pytest.param({"LLM_PROVIDER": "openai"}, "OPENAI_API_KEY", id="openai-without-key"),
        pytest.param({"OPENAI_BASE_URL": "127.0.0.1:8080/v1"}, "OPENAI_BASE_URL",
                     id="base-url-no-scheme"),
        pytest.param({"OPENAI_BASE_URL": "ftp://h/v1"}, "OPENAI_BASE_URL", id="base-url-ftp"),
        pytest.param({"LLM_MODEL": ""}, "LLM_MODEL", id="model-empty"),
        pytest.param({"HEARTBEAT_INTERVAL": "0"}, "HEARTBEAT_INTERVAL", id="heartbeat-0"),
        pytest.param({"FIRST_TOKEN_TIMEOUT": "-1"}, "FIRST_TOKEN_TIMEOUT", id="ttft-negative"),
        pytest.param({"IDLE_TIMEOUT": "nan"}, "IDLE_TIMEOUT", id="idle-nan"),
        pytest.param({"STREAM_TIMEOUT": "inf"}, "STREAM_TIMEOUT", id="stream-inf"),
        pytest.param({"STREAM_TIMEOUT": "ten"}, "STREAM_TIMEOUT", id="stream-not-a-number"),
        pytest.param({"RESUME_GRACE": "-0.5"}, "RESUME_GRACE", id="grace-negative"),
        pytest.param({"STREAM_TTL": "-1"}, "STREAM_TTL", id="ttl-negative"),
        pytest.param({"BODY_TIMEOUT": "0"}, "BODY_TIMEOUT", id="body-timeout-0"),
        pytest.param({"SEND_TIMEOUT": "-30"}, "SEND_TIMEOUT", id="send-timeout-negative"),
        pytest.param({"BUFFER_MAX_DELAY_MS": "-1"}, "BUFFER_MAX_DELAY_MS", id="delay-negative"),
        pytest.param({"BUFFER_MAX_TOKENS": "0"}, "BUFFER_MAX_TOKENS", id="buffer-0"),
        pytest.param({"UPSTREAM_RETRIES": "-1"}, "UPSTREAM_RETRIES", id="retries-negative"),
        pytest.param({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", id="redis-http"),
        pytest.param({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL", id="redis-no-scheme"),
        pytest.param({"REDIS_URL": ""}, "REDIS_URL", id="redis-empty"),
        pytest.param({"REDIS_URL": "redis://h:99999/0"}, "REDIS_URL", id="redis-bad-port"),
        pytest.param({"REDIS_URL": "unix://"}, "REDIS_URL", id="redis-unix-no-path"),
        pytest.param({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER", id="cluster-not-bool"),
        pytest.param({"REDIS_PREFIX": ""}, "REDIS_PREFIX", id="prefix-empty"),
        pytest.param({"CORS_ORIGINS": "*"}, "CORS_ORIGINS", id="cors-star"),
        pytest.param({"CORS_ORIGINS": "https://a.example/"}, "CORS_ORIGINS",
                     id="cors-trailing-slash"),
        pytest.param({"CORS_ORIGINS": "https://a.example/app"}, "CORS_ORIGINS", id="cors-path"),
        pytest.param({"CORS_ORIGINS": "a.example"}, "CORS_ORIGINS", id="cors-no-scheme"),
        pytest.param({"CORS_ORIGINS": "null"}, "CORS_ORIGINS", id="cors-null"),
        pytest.param({"CORS_ORIGINS": "ftp://a.example"}, "CORS_ORIGINS", id="cors-ftp"),
        pytest.param({"CORS_ORIGINS": "https://u:p@a.example"}, "CORS_ORIGINS",
                     id="cors-userinfo"),
        pytest.param({"CORS_ORIGINS": "https://a.example?x=1"}, "CORS_ORIGINS", id="cors-query"),
        pytest.param({"IMAGE_URL_SCHEMES": "https,,data"}, "IMAGE_URL_SCHEMES",
                     id="schemes-empty-entry"),
        pytest.param({"IMAGE_URL_SCHEMES": ""}, "IMAGE_URL_SCHEMES", id="schemes-empty"),
        pytest.param({"IMAGE_URL_SCHEMES": "https:"}, "IMAGE_URL_SCHEMES", id="schemes-colon"),
        pytest.param({"MAX_MESSAGES": "0"}, "MAX_MESSAGES", id="max-messages-0"),
        pytest.param({"MAX_OUTPUT_TOKENS": "0"}, "MAX_OUTPUT_TOKENS", id="max-output-0"),
        pytest.param({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES", id="max-body-negative"),
        pytest.param({"MAX_STREAMS": "0"}, "MAX_STREAMS", id="max-streams-0"),
        pytest.param({"MAX_FOLLOWERS": "0"}, "MAX_FOLLOWERS", id="max-followers-0"),
        pytest.param({"MAX_CONNECTIONS_PER_KEY": "0"}, "MAX_CONNECTIONS_PER_KEY",
                     id="max-connections-0"),
    ],
)
def test_settings_that_cannot_work_name_the_variable(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as info:
        from_env(monkeypatch, **env)
    message = str(info.value)
    assert message.startswith(f"invalid settings: {name}: ")
    assert "\n" not in message
    assert SECRET not in message
    assert isinstance(info.value, ValueError)


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as info:
        from_env(monkeypatch, IDLE_TIMEOUT="-1", API_KEYS="a,,b", REDIS_URL="http://x")
    for name in ("IDLE_TIMEOUT: ", "API_KEYS: ", "REDIS_URL: "):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"OPENAI_API_KEY": SECRET, "API_KEYS": f"{SECRET}\u00e9"}, id="keys"),
        pytest.param({"REDIS_URL": f"http://:{SECRET}@127.0.0.1:6379"}, id="redis-password"),
        pytest.param({"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:bad"}, id="redis-bad-port"),
        pytest.param({"OPENAI_BASE_URL": f"ftp://u:{SECRET}@h/v1"}, id="base-url-password"),
    ],
)
def test_a_secret_never_appears_in_a_refusal(monkeypatch: pytest.MonkeyPatch,
                                             env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        from_env(monkeypatch, MAX_STREAMS="x", **env)
    assert SECRET not in str(info.value)
    assert "MAX_STREAMS: " in str(info.value)
    for name in set(env) - {"OPENAI_API_KEY"}:  # a valid key, beside a bad one
        assert f"{name}: " in str(info.value)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        pytest.param({}, "API_KEYS", [], id="keys-unset"),
        pytest.param({"API_KEYS": "a, b ,c"}, "API_KEYS", ["a", "b", "c"], id="keys-trimmed"),
        pytest.param({}, "IMAGE_URL_SCHEMES", ["https", "data"], id="schemes-default"),
        pytest.param({"IMAGE_URL_SCHEMES": "HTTPS, Data"}, "IMAGE_URL_SCHEMES",
                     ["https", "data"], id="schemes-lower-cased"),
        pytest.param({}, "CORS_ORIGINS", [], id="cors-unset"),
        pytest.param({"CORS_ORIGINS": ""}, "CORS_ORIGINS", [], id="cors-empty-is-unset"),
        # As a browser writes Origin: lower case, no default port.
        pytest.param({"CORS_ORIGINS": "HTTPS://App.Example:443, http://127.0.0.1:8080"},
                     "CORS_ORIGINS", ["https://app.example", "http://127.0.0.1:8080"],
                     id="cors-normalised"),
        pytest.param({"CORS_ORIGINS": "http://[::1]:80,http://[::1]:3000"}, "CORS_ORIGINS",
                     ["http://[::1]", "http://[::1]:3000"], id="cors-ipv6"),
        pytest.param({"ALLOWED_MODELS": "a,b"}, "ALLOWED_MODELS", ["a", "b"], id="models"),
        pytest.param({"ALLOWED_MODELS": ""}, "ALLOWED_MODELS", [], id="models-empty-is-unset"),
        pytest.param({"REDIS_URL": "rediss://:pw@h:6380/1"}, "REDIS_URL",
                     "rediss://:pw@h:6380/1", id="redis-tls"),
        pytest.param({"REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL",
                     "unix:///run/redis.sock", id="redis-unix"),
        pytest.param({"RESUME_GRACE": "0"}, "RESUME_GRACE", 0.0, id="grace-0"),
        pytest.param({"MAX_OUTPUT_TOKENS": "4096"}, "MAX_OUTPUT_TOKENS", 4096, id="max-output"),
        pytest.param({"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
                     "LLM_PROVIDER", "openai", id="local-openai-server-without-key"),
    ],
)
def test_accepted_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str,
                           expected: Any) -> None:
    value = getattr(from_env(monkeypatch, **env), field)
    if field == "API_KEYS":
        value = [key.get_secret_value() for key in value]
    assert value == expected


@pytest.mark.parametrize(
    ("env", "warns"),
    [
        pytest.param({"OPENAI_API_KEY": SECRET}, ["API_KEYS"], id="openai-without-keys"),
        pytest.param({"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
                     ["API_KEYS"], id="local-server-without-keys"),
        pytest.param({"OPENAI_API_KEY": SECRET, "API_KEYS": "k"}, [], id="openai-with-keys"),
        pytest.param({}, [], id="simulated"),
        pytest.param({"ALLOWED_MODELS": "a,b", "LLM_MODEL": "c"}, ["LLM_MODEL"],
                     id="default-model-not-allowed"),
    ],
)
def test_startup_warnings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                          warns: list[str]) -> None:
    warnings = startup_warnings(from_env(monkeypatch, **env))
    assert [w.split(" ")[0] for w in warnings] == warns
    assert all(SECRET not in w for w in warnings)


# --- Under gunicorn: a bad setting stops the service at start, with one clear line.


def boot(env: dict[str, str], timeout: float = 60.0) -> tuple[int | None, str]:
    """Start the service as in production; return its exit code and log once it stops."""
    tmp = Path(tempfile.mkdtemp(prefix="llm-stream-settings-"))
    base = {k: v for k, v in os.environ.items() if k not in _CONTRACT_VARS}
    base.update({"BIND": f"127.0.0.1:{free_port()}", "XDG_RUNTIME_DIR": str(tmp),
                 "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"), "PYTHONUNBUFFERED": "1"})
    base.update(env)
    proc = subprocess.run([PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                          cwd=ROOT, env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace")


# 3 is gunicorn's "worker failed to boot": the master stops instead of respawning; 1 is the
# master refusing before it starts any worker.
@pytest.mark.parametrize(
    ("env", "name", "exit_code"),
    [
        pytest.param({"API_KEYS": f"{SECRET},,other"}, "API_KEYS", 3, id="empty-api-key"),
        pytest.param({"HEARTBEAT_INTERVAL": "-1", "LLM_PROVIDER": "bogus"},
                     "HEARTBEAT_INTERVAL", 3, id="negative-timeout-and-provider"),
        pytest.param({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", 3, id="redis-url"),
        pytest.param({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY", 1, id="no-workers"),
    ],
)
def test_a_bad_setting_stops_gunicorn_with_one_line(env: dict[str, str], name: str,
                                                    exit_code: int) -> None:
    code, log = boot(env)
    assert code == exit_code, log
    named = [line for line in log.splitlines() if line.startswith("Error: invalid settings:")]
    assert len(named) == 1, log
    assert f"{name}: " in named[0]
    assert "Traceback" not in log and "pydantic" not in log, log
    assert SECRET not in log


def test_openai_without_api_keys_warns_at_start(upstream: Any) -> None:
    service = Service(openai_env(upstream))
    try:
        warnings = [line for line in service.log().splitlines()
                    if "WARNING" in line and "API_KEYS is not set" in line]
    finally:
        service.stop()
    assert len(warnings) == 1
    assert "sk-test-SECRETKEY" not in service.log()


def test_no_warning_with_api_keys(upstream: Any) -> None:
    service = Service(openai_env(upstream, API_KEYS="key-0123456789"))
    try:
        assert "API_KEYS is not set" not in service.log()
    finally:
        service.stop()
