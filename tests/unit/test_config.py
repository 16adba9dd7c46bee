"""Unit tests for shared.config (defaults, TOML file, RIVULET_* environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings, load_settings


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rivulet.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- defaults (CONTRACT.md, "Configuration") ----------------------------------------------------


def test_contract_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.timescale_dsn == "postgresql://127.0.0.1:5432/rivulet"
    assert settings.http_port == 8080
    assert settings.geoip_city_db == ""
    assert settings.trusted_proxies == ()
    assert settings.signature_window_s == 300


def test_default_clickhouse_is_chdb_under_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.clickhouse_dsn == f"chdb://{tmp_path}/var/clickhouse"
    assert settings.clickhouse_dsn.startswith("chdb:///")
    assert settings.uses_chdb


def test_clickhouse_dsn_follows_var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"RIVULET_VAR_DIR": "state"})
    assert settings.clickhouse_dsn == f"chdb://{tmp_path}/state/clickhouse"


@pytest.mark.parametrize(
    ("url", "chdb"),
    [
        ("http://default:pw@clickhouse:8123/rivulet", False),
        ("https://ch.example.com:8443/db", False),
        ("chdb:///data/ch", True),
    ],
)
def test_clickhouse_url_override(url: str, chdb: bool) -> None:
    settings = load_settings(environ={"RIVULET_CLICKHOUSE_URL": url})
    assert settings.clickhouse_dsn == url
    assert settings.uses_chdb is chdb


def test_defaults_equal_struct_defaults() -> None:
    assert load_settings(environ={}) == Settings()


# --- environment ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("RIVULET_HTTP_PORT", "9000", "http_port", 9000),
        ("RIVULET_REDIS_URL", "redis://r:6380/2", "redis_url", "redis://r:6380/2"),
        ("RIVULET_TIMESCALE_DSN", "postgresql://pg/x", "timescale_dsn", "postgresql://pg/x"),
        ("RIVULET_GEOIP_CITY_DB", "/geo/City.mmdb", "geoip_city_db", "/geo/City.mmdb"),
        ("RIVULET_RETRY_BASE_S", "0.75", "retry_base_s", 0.75),
        ("RIVULET_RATE_LIMIT_BURST", "10", "rate_limit_burst", 10.0),
        ("RIVULET_MAX_DELIVERIES", "9", "max_deliveries", 9),
    ],
)
def test_env_override_with_conversion(
    variable: str, value: str, field: str, expected: object
) -> None:
    settings = load_settings(environ={variable: value})
    actual = getattr(settings, field)
    assert actual == expected
    assert type(actual) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8", ("10.0.0.0/8",)),
        ("10.0.0.0/8,192.168.0.1", ("10.0.0.0/8", "192.168.0.1")),
        (" 10.0.0.0/8 , ,fd00::/8, ", ("10.0.0.0/8", "fd00::/8")),
        ("", ()),
    ],
)
def test_env_trusted_proxies_comma_list(value: str, expected: tuple[str, ...]) -> None:
    assert load_settings(environ={"RIVULET_TRUSTED_PROXIES": value}).trusted_proxies == expected


def test_env_ignores_unrelated_variables() -> None:
    settings = load_settings(environ={"RIVULET_NOT_A_SETTING": "1", "HTTP_PORT": "1"})
    assert settings == Settings()


def test_env_read_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIVULET_HTTP_PORT", "9100")
    assert load_settings().http_port == 9100


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("RIVULET_HTTP_PORT", "abc", "http_port"),
        ("RIVULET_HTTP_PORT", "", "http_port"),
        ("RIVULET_WRITER_BATCH_SIZE", "lots", "writer_batch_size"),
        ("RIVULET_RETRY_MAX_S", "ten", "retry_max_s"),
    ],
)
def test_env_bad_value_names_the_field(variable: str, value: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_settings(environ={variable: value})


# --- TOML file -----------------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'redis_url = "redis://toml:6379/1"\nhttp_port = 7000\n'
        'trusted_proxies = ["10.0.0.0/8", "fd00::/8"]\nretry_base_s = 1\n',
    )
    settings = load_settings(path, environ={})
    assert settings.redis_url == "redis://toml:6379/1"
    assert settings.http_port == 7000
    assert settings.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    assert settings.retry_base_s == 1.0
    assert settings.timescale_dsn == Settings().timescale_dsn  # untouched defaults remain


def test_env_wins_over_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'http_port = 7000\nredis_url = "redis://toml/0"\n')
    settings = load_settings(path, environ={"RIVULET_HTTP_PORT": "9000"})
    assert settings.http_port == 9000
    assert settings.redis_url == "redis://toml/0"


def test_env_trusted_proxies_replace_toml_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'trusted_proxies = ["10.0.0.0/8"]\n')
    settings = load_settings(path, environ={"RIVULET_TRUSTED_PROXIES": "172.16.0.0/12"})
    assert settings.trusted_proxies == ("172.16.0.0/12",)


@pytest.mark.parametrize(
    "text", ["no_such_setting = 1\n", "HTTP_PORT = 1\n", "[gateway]\nhttp_port = 1\n"]
)
def test_toml_unknown_key(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        load_settings(write_toml(tmp_path, text), environ={})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('http_port = "abc"\n', "http_port"),
        ("http_port = 1.5\n", "http_port"),
        ("redis_url = 5\n", "redis_url"),
        ('trusted_proxies = "10.0.0.0/8"\n', "trusted_proxies"),
    ],
)
def test_toml_bad_value_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_settings(write_toml(tmp_path, text), environ={})


def test_toml_syntax_error_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_settings(write_toml(tmp_path, "http_port = \n"), environ={})


def test_no_config_file_means_defaults() -> None:
    assert load_settings(None, environ={}) == load_settings("", environ={}) == Settings()
