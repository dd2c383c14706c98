"""ServerSettings: where the server and token come from, and that the token is never shown."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from simvue_hpc.config import HPCSettings, ServerSettings, find_config_file
from simvue_hpc.errors import ConfigurationError

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.SECRET-signature-4711"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(cwd, home): a working directory three levels below tmp_path, and a separate home."""
    cwd = tmp_path / "work" / "project" / "case"
    home = tmp_path / "home"
    cwd.mkdir(parents=True)
    home.mkdir()
    return cwd, home


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _toml(
    directory: Path, url: str = "https://toml.example.com", token: str = "toml-token", name: str = "simvue.toml"
) -> Path:
    return _write(
        directory / name, f'[server]\nurl = "{url}"\ntoken = "{token}"\n\n[offline]\ncache = "/scratch/cache"\n'
    )


def _ini(
    directory: Path, url: str = "https://ini.example.com", token: str = "ini-token", name: str = "simvue.ini"
) -> Path:
    return _write(directory / name, f"[server]\nurl = {url}\ntoken = {token}\n")


def _load(cwd: Path, home: Path, **environ: str) -> ServerSettings:
    return ServerSettings.load(environ=environ, cwd=cwd, home=home)


# --- nothing configured --------------------------------------------------------------------------------


def test_nothing_configured_is_offline(dirs: tuple[Path, Path]) -> None:
    settings = _load(*dirs)
    assert settings.url is None and settings.token is None
    assert not settings.online
    assert settings.api_url is None
    assert (settings.heartbeat_interval, settings.upload_timeout, settings.request_timeout) == (60.0, 60.0, 30.0)
    assert settings.offline_cache is None


def test_url_without_token_is_offline(dirs: tuple[Path, Path]) -> None:
    assert not _load(*dirs, SIMVUE_URL="https://x.example.com").online
    assert not _load(*dirs, SIMVUE_TOKEN=TOKEN).online
    assert _load(*dirs, SIMVUE_URL="https://x.example.com", SIMVUE_TOKEN=TOKEN).online


# --- precedence ----------------------------------------------------------------------------------------


def test_environment_wins_over_files(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd)
    _ini(cwd)
    settings = _load(cwd, home, SIMVUE_URL="https://env.example.com", SIMVUE_TOKEN="env-token")
    assert (settings.url, settings.token) == ("https://env.example.com", "env-token")
    assert settings.source is not None and settings.source.startswith("environment")


def test_environment_overrides_one_field_at_a_time(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd)
    settings = _load(cwd, home, SIMVUE_TOKEN="env-token")
    assert (settings.url, settings.token) == ("https://toml.example.com", "env-token")


def test_empty_environment_variables_count_as_unset(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd)
    settings = _load(cwd, home, SIMVUE_URL="", SIMVUE_TOKEN="  ")
    assert (settings.url, settings.token) == ("https://toml.example.com", "toml-token")


def test_toml_wins_over_ini_and_the_files_are_not_mixed(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / "simvue.toml").write_text('[server]\nurl = "https://toml.example.com"\n')  # no token here
    _ini(cwd)
    settings = _load(cwd, home)
    assert settings.url == "https://toml.example.com"
    assert settings.token is None  # not taken from simvue.ini: a token never meets another file's URL
    assert settings.source == str(cwd / "simvue.toml")


def test_toml_in_home_wins_over_ini_in_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(home)
    _ini(cwd)
    assert _load(cwd, home).url == "https://toml.example.com"


def test_values_from_toml(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = _toml(cwd)
    settings = _load(cwd, home)
    assert (settings.url, settings.token, settings.offline_cache) == (
        "https://toml.example.com",
        "toml-token",
        "/scratch/cache",
    )
    assert settings.source == str(path)
    assert settings.online


def test_offline_directory_variable_wins_over_toml(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd)
    assert _load(cwd, home, SIMVUE_OFFLINE_DIRECTORY="/env/cache").offline_cache == "/env/cache"


# --- where the files are looked for --------------------------------------------------------------------


def test_toml_is_found_in_a_parent_directory(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = _toml(cwd.parent.parent)
    assert find_config_file(cwd, home) == path
    assert _load(cwd, home).url == "https://toml.example.com"


def test_the_nearest_toml_wins(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd.parent.parent, url="https://far.example.com")
    _toml(cwd.parent, url="https://near.example.com", name=".simvue.toml")
    _toml(home, url="https://home.example.com")
    assert _load(cwd, home).url == "https://near.example.com"


def test_hidden_toml_is_found(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd, name=".simvue.toml")
    assert _load(cwd, home).token == "toml-token"


def test_simvue_toml_before_hidden_toml_in_the_same_directory(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd, url="https://hidden.example.com", name=".simvue.toml")
    _toml(cwd, url="https://plain.example.com")
    assert _load(cwd, home).url == "https://plain.example.com"


@pytest.mark.parametrize(
    ("write", "name", "token"),
    [
        (_toml, "simvue.toml", "toml-token"),
        (_toml, ".simvue.toml", "toml-token"),
        (_ini, ".simvue.ini", "ini-token"),
        (_ini, "simvue.ini", "ini-token"),
    ],
)
def test_a_file_in_home_when_none_above_cwd(
    dirs: tuple[Path, Path], write: Callable[..., Path], name: str, token: str
) -> None:
    cwd, home = dirs
    path = write(home, name=name)
    settings = _load(cwd, home)
    assert (settings.token, settings.source) == (token, str(path))


def test_home_defaults_to_the_home_variable(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(home)
    assert ServerSettings.load(environ={"HOME": str(home)}, cwd=cwd).url == "https://toml.example.com"


def test_ini_in_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = _ini(cwd)
    settings = _load(cwd, home)
    assert (settings.url, settings.token, settings.source) == ("https://ini.example.com", "ini-token", str(path))


def test_ini_is_not_searched_upwards(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _ini(cwd.parent)
    assert _load(cwd, home).url is None


def test_ini_in_cwd_before_ini_in_home(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _ini(home, url="https://home.example.com", name=".simvue.ini")
    _ini(cwd, url="https://cwd.example.com")
    assert _load(cwd, home).url == "https://cwd.example.com"


def test_hidden_ini_before_plain_ini_in_home(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _ini(home, url="https://plain.example.com")
    _ini(home, url="https://hidden.example.com", name=".simvue.ini")
    assert _load(cwd, home).url == "https://hidden.example.com"


def test_values_are_stripped(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / "simvue.toml").write_text('[server]\nurl = " https://x.example.com "\ntoken = "abc\\n"\n')
    settings = _load(cwd, home)
    assert (settings.url, settings.token) == ("https://x.example.com", "abc")


def test_ini_without_server_section(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / "simvue.ini").write_text("[other]\nkey = value\n")
    assert _load(cwd, home).url is None


# --- malformed files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("simvue.toml", f'[server]\ntoken = "{TOKEN}\n'),  # unterminated string
        ("simvue.toml", f"[server]\ntoken = {TOKEN}\n"),  # not a TOML value
        ("simvue.toml", f'[server]\ntoken = "{TOKEN}"\ntoken = "{TOKEN}"\n'),  # twice
        ("simvue.toml", f'server = "{TOKEN}"\n'),  # [server] not a table
        ("simvue.toml", "[server]\ntoken = 4711\n"),  # not a string
        (".simvue.toml", f'[offline\ncache = "{TOKEN}"\n'),
        ("simvue.ini", f"token = {TOKEN}\n[server]\n"),  # before any section
        ("simvue.ini", f"[server]\nurl = https://x.example.com\n{TOKEN}\n"),  # no '='
        ("simvue.ini", f"[server]\ntoken = {TOKEN}\ntoken = {TOKEN}\n"),  # duplicate option
        ("simvue.ini", f"[server]\ntoken = {TOKEN}\n[server]\n"),  # duplicate section
    ],
)
def test_malformed_file_names_the_file_and_hides_the_token(dirs: tuple[Path, Path], name: str, text: str) -> None:
    cwd, home = dirs
    path = cwd / name
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        _load(cwd, home)
    message = str(info.value)
    assert str(path) in message
    assert TOKEN not in message
    assert "SECRET" not in message
    assert TOKEN not in repr(info.value)


def test_file_that_is_not_utf8(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    path = cwd / "simvue.toml"
    path.write_bytes(b'[server]\ntoken = "\xff\xfe"\n')
    with pytest.raises(ConfigurationError, match="UTF-8") as info:
        _load(cwd, home)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "variable",
    ["SIMVUE_HEARTBEAT_INTERVAL", "SIMVUE_UPLOAD_TIMEOUT", "SIMVUE_ABORT_INTERVAL", "SIMVUE_RETRY_BUDGET"],
)
@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_invalid_time_variables(dirs: tuple[Path, Path], variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        ServerSettings.load(environ={variable: value}, cwd=dirs[0], home=dirs[1])


def test_time_variables(dirs: tuple[Path, Path]) -> None:
    settings = _load(*dirs, SIMVUE_HEARTBEAT_INTERVAL="2.5", SIMVUE_UPLOAD_TIMEOUT="120")
    assert (settings.heartbeat_interval, settings.upload_timeout) == (2.5, 120.0)


def test_upload_variables(dirs: tuple[Path, Path]) -> None:
    settings = _load(*dirs)
    assert (settings.abort_interval, settings.retry_attempts, settings.retry_budget) == (5.0, 5, 30.0)
    assert settings.event_prefix is True
    settings = _load(
        *dirs, SIMVUE_ABORT_INTERVAL="1", SIMVUE_RETRY_ATTEMPTS="2", SIMVUE_RETRY_BUDGET="9", SIMVUE_EVENT_PREFIX="0"
    )
    assert (settings.abort_interval, settings.retry_attempts, settings.retry_budget) == (1.0, 2, 9.0)
    assert settings.event_prefix is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SIMVUE_RETRY_ATTEMPTS", "0"), ("SIMVUE_RETRY_ATTEMPTS", "2.5"), ("SIMVUE_EVENT_PREFIX", "maybe")],
)
def test_invalid_upload_variables(dirs: tuple[Path, Path], variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        _load(*dirs, **{variable: value})


@pytest.mark.parametrize(
    "field", ["heartbeat_interval", "upload_timeout", "request_timeout", "abort_interval", "retry_budget"]
)
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), True, "5"])
def test_invalid_times_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        ServerSettings(**{field: value})  # type: ignore[arg-type]


def test_url_must_be_http(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigurationError, match="http"):
        _load(*dirs, SIMVUE_URL="ftp://x.example.com", SIMVUE_TOKEN=TOKEN)
    with pytest.raises(ConfigurationError) as info:
        ServerSettings(url=f"ftp://user:{TOKEN}@x.example.com")
    assert TOKEN not in str(info.value)


def test_non_string_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        ServerSettings(token=4711)  # type: ignore[arg-type]
    assert "4711" not in str(info.value)


# --- the token is never shown; the settings are frozen -------------------------------------------------


def test_repr_and_str_hide_the_token() -> None:
    settings = ServerSettings(url="https://x.example.com", token=TOKEN)
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}", repr([settings])):
        assert TOKEN not in text
        assert "SECRET" not in text
        assert "token='***'" in text
    assert "url='https://x.example.com'" in repr(settings)
    assert "token=None" in repr(ServerSettings())


def test_loaded_settings_hide_the_token(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    _toml(cwd, token=TOKEN)
    settings = _load(cwd, home)
    assert settings.token == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)


def test_settings_are_frozen() -> None:
    settings = ServerSettings(url="https://x.example.com", token=TOKEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.token = "other"  # type: ignore[misc]
    assert dataclasses.replace(settings, request_timeout=5.0).request_timeout == 5.0


def test_settings_survive_a_round_trip_through_a_dict() -> None:
    """The aggregator rebuilds them with ServerSettings(**asdict(settings))."""
    settings = ServerSettings(url="https://x.example.com", token=TOKEN, source="environment")
    assert ServerSettings(**dataclasses.asdict(settings)) == settings


@pytest.mark.parametrize(
    ("url", "api_url"),
    [
        ("https://x.example.com", "https://x.example.com/api"),
        ("https://x.example.com/", "https://x.example.com/api"),
        ("https://x.example.com/api", "https://x.example.com/api"),
        ("https://x.example.com/api/", "https://x.example.com/api"),
        ("https://x.example.com/api//", "https://x.example.com/api"),
        ("http://127.0.0.1:8080/simvue", "http://127.0.0.1:8080/simvue/api"),
        ("http://127.0.0.1:8080/simvue/api", "http://127.0.0.1:8080/simvue/api"),
        ("https://x.example.com/apis", "https://x.example.com/apis/api"),
    ],
)
def test_api_url(url: str, api_url: str) -> None:
    assert ServerSettings(url=url).api_url == api_url


# --- loading never touches the network -----------------------------------------------------------------


def test_loading_does_not_touch_the_network(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def _refuse(*_: object, **__: object) -> None:
        raise AssertionError("ServerSettings.load opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    cwd, home = dirs
    _toml(cwd, url="https://simvue.example.com", token=TOKEN)
    settings = _load(cwd, home, SIMVUE_HEARTBEAT_INTERVAL="10")
    assert settings.online and settings.api_url == "https://simvue.example.com/api"


def test_hpc_settings_are_unchanged() -> None:
    assert HPCSettings.load(environ={}).to_dict() == HPCSettings().to_dict()
    assert HPCSettings.load(environ={"SIMVUE_HPC_CLOSE_TIMEOUT": "30"}).close_timeout == 30.0


def test_relative_cwd_is_searched_upwards(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, home = dirs
    path = _toml(cwd.parent)
    monkeypatch.chdir(cwd)
    settings = ServerSettings.load(environ={}, cwd=".", home=home)
    assert (settings.url, settings.source) == ("https://toml.example.com", str(path))


@pytest.mark.parametrize("token", ["abc def", "abc\n", "\tabc", "abc\x00"])
def test_token_with_whitespace_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigurationError, match="whitespace") as info:
        ServerSettings(url="https://x.example.com", token=token)
    assert "abc" not in str(info.value)


def test_server_settings_cross_a_process_boundary_as_a_dict() -> None:
    settings = ServerSettings(url="https://s.example.com", token=TOKEN, request_timeout=5.0, source="environment")
    data = json.loads(json.dumps(settings.to_dict()))
    again = ServerSettings.from_dict(data)
    assert again == settings and again.source == "environment" and again.request_timeout == 5.0
    with pytest.raises(ConfigurationError, match=r"unknown server setting.*bogus"):
        ServerSettings.from_dict({**data, "bogus": 1})
