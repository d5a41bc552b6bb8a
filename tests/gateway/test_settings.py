"""Configuration: defaults, file plus environment, and one clear line for every mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway import settings
from gateway.errors import ConfigError
from gateway.starter import STARTER, write_starter


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("STOCKADE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stockade.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_safe_defaults() -> None:
    loaded = settings.load()
    assert loaded.redis.url is None
    assert loaded.channels.console.enabled
    assert not loaded.channels.telegram.enabled
    assert loaded.bus.max_deliveries == 5


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[bus]\nbatch = 10\nblock_ms = 20\n")
    monkeypatch.setenv("STOCKADE_BUS__BATCH", "30")
    loaded = settings.load(path)
    assert loaded.bus.batch == 30
    assert loaded.bus.block_ms == 20


def test_config_file_is_found_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    monkeypatch.setenv("STOCKADE_CONFIG", str(path))
    assert settings.load().redis.url == "redis://127.0.0.1:1/0"


def test_data_dir_expands_home(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "~/state"\n')
    assert settings.load(path).data_dir == tmp_path / "home" / "state"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[bus]\nmax_deliveries = 'lots'\n", "bus.max_deliveries", "valid integer"),
        ("[bus]\nmax_deliveries = 0\n", "bus.max_deliveries", "greater than or equal"),
        ("[bus]\nmax_deliverys = 3\n", "bus.max_deliverys", "unknown key"),
        ("colour = 'red'\n", "colour", "unknown key"),
        ("[channels.telegram]\nenabled = true\n", "channels.telegram.token", "required"),
        ("[channels.discord]\nenabled = true\n", "channels.discord.token", "required"),
        (
            "[channels.slack]\nenabled = true\nbot_token = 'x'\n",
            "channels.slack.app_token",
            "required",
        ),
        (
            "[channels.slack]\nenabled = true\nmode = 'http'\nbot_token = 'x'\n",
            "channels.slack.signing_secret",
            "required",
        ),
        ("[channels.matrix]\nenabled = true\n", "channels.matrix.homeserver", "required"),
        ("[channels.whatsapp]\nenabled = true\n", "channels.whatsapp.account_sid", "required"),
        ("[channels.slack]\nmode = 'carrier-pigeon'\n", "channels.slack.mode", "socket"),
        (
            "[channels.telegram]\nenabled = true\ntoken = 't'\nmode = 'webhook'\n",
            "channels.telegram.secret_token",
            "required",
        ),
        (
            "[channels.telegram]\nsecret_token = 'short'\n",
            "channels.telegram.secret_token",
            "16 to 256",
        ),
        (
            "[channels.telegram]\napi_base = 'http://api.telegram.org'\n",
            "channels.telegram.api_base",
            "https",
        ),
        ("[channels.slack]\nwebhook_path = 'events'\n", "channels.slack.webhook_path", "path"),
        (
            "[channels.whatsapp]\nenabled = true\naccount_sid = 'AC1'\nauth_token = 't'\n"
            "from_number = 'whatsapp:+1'\n",
            "channels.webhooks.public_url",
            "required for whatsapp",
        ),
        (
            "[channels.webhooks]\npublic_url = 'bot.example.org'\n",
            "channels.webhooks.public_url",
            "http",
        ),
        (
            "[channels.ingress]\nper_sender_per_s = 0\n",
            "channels.ingress.per_sender_per_s",
            "greater",
        ),
        ("[redis\n", "-", "not valid TOML"),
        (
            "[models.default]\nfallback = 'backup'\n",
            "models.default.fallback",
            "no model 'backup'",
        ),
        ("[models.default]\nfallback = 'default'\n", "models.default.fallback", "itself"),
        ("[mesh]\nallowed_models = ['big']\n", "mesh.allowed_models", "no model 'big'"),
        ("[budget]\ntimezone = 'Mars/Olympus'\n", "budget.timezone", "unknown time zone"),
        ("[budget.user]\ndaily_usd = -1\n", "budget.user.daily_usd", "greater than"),
        ("[models.default]\nmax_tokens = 0\n", "models.default.max_tokens", "greater than"),
    ],
)
def test_a_bad_file_names_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        settings.load(path)
    error = caught.value
    assert error.source == str(path)
    assert error.key == key
    assert problem in error.problem
    assert "\n" not in str(error)


def test_a_bad_environment_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_BUS__BATCH", "many")
    with pytest.raises(ConfigError) as caught:
        settings.load()
    assert caught.value.source == "environment STOCKADE_BUS__BATCH"
    assert caught.value.key == "bus.batch"


@pytest.mark.parametrize(
    ("variable", "key"),
    [("STOCKADE_COLOUR", "colour"), ("STOCKADE_BUS__COLOUR", "bus.colour")],
)
def test_an_unknown_environment_variable_is_an_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, key: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError, match="unknown key") as caught:
        settings.load()
    assert caught.value.key == key


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        settings.load(tmp_path / "absent.toml")


def test_secrets_never_appear_in_the_settings_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_CHANNELS__TELEGRAM__TOKEN", "123:canary-secret")
    path = write(tmp_path, "[channels.telegram]\nenabled = true\n")
    loaded = settings.load(path)
    assert "canary-secret" not in repr(loaded)
    assert "canary-secret" not in loaded.model_dump_json()
    token = loaded.channels.telegram.token
    assert token is not None and token.get_secret_value() == "123:canary-secret"


def test_the_starter_file_loads_and_mentions_every_setting(tmp_path: Path) -> None:
    path = tmp_path / "new" / "stockade.toml"
    write_starter(path)
    assert path.stat().st_mode & 0o077 == 0
    assert settings.load(path) == settings.load(None)

    def keys(model: type[settings.BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, settings.BaseModel):
                found += keys(annotation, f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}")
        return found

    for key in keys(settings.Settings):
        assert key.rsplit(".", 1)[-1] in STARTER, key
    tomllib.loads(STARTER)


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path, "# mine\n")
    with pytest.raises(ConfigError, match="already exists"):
        write_starter(path)
    assert path.read_text() == "# mine\n"


def test_an_empty_secret_or_endpoint_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_MODELS__DEFAULT__SECRET", "")
    monkeypatch.setenv("STOCKADE_MODELS__DEFAULT__API_BASE", "")
    model = settings.load().models["default"]
    assert model.secret is None and model.api_base is None
