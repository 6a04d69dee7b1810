"""Settings: TOML file, CONFMEET_* environment, explicit overrides, validation with fixes named."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.settings import SettingsError, ensure_secrets, load_settings


def test_embedded_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.touch()
    s = load_settings(empty, env={"CONFMEET_DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path}/confmeet.db"
    assert s.documents_url == f"sqlite:///{tmp_path}/documents.db"
    assert s.objects_url == f"file://{tmp_path}/objects"
    assert s.bus == "memory://" and s.inference == "local://"
    assert s.base_url == "http://127.0.0.1:8800"


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "confmeet.toml"
    config.write_text('port = 9000\nbus = "redis://127.0.0.1:6379/0"\ncors_origins = ["https://a.example"]\n'
                      'allow_registration = true\n')
    s = load_settings(config, env={"CONFMEET_PORT": "9100", "CONFMEET_CORS_ORIGINS": "https://b.example, https://c.example"})
    assert s.port == 9100 and s.bus == "redis://127.0.0.1:6379/0" and s.allow_registration is True
    assert s.cors_origins == ["https://b.example", "https://c.example"]
    assert s.source == str(config)
    s = load_settings(config, env={"CONFMEET_PORT": "9100"}, overrides={"port": 9200, "host": None})
    assert s.port == 9200 and s.host == "127.0.0.1"


@pytest.mark.parametrize("content, env, message", [
    ('database = "mysql://x"', {}, "'database'"),
    ('bus = "kafka://x"', {}, "memory://"),
    ('objects = "ftp://x"', {}, "file://"),
    ('port = "eighty"', {}, "wrong type"),
    ('colour = "red"', {}, "unknown setting"),
    ("port = [", {}, "not valid TOML"),
    ("", {"CONFMEET_PORT": "0"}, "between 1 and 65535"),
    ("", {"CONFMEET_ALLOW_REGISTRATION": "maybe"}, "wrong type"),
    ('tls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"', {}, "does not exist"),
    ('tls_cert = "/etc/hostname"', {}, "both 'tls_cert' and 'tls_key'"),
    ('ldap_url = "http://dir"', {}, "ldaps://HOST:636"),
    ('ldap_url = "ldap://dir"\nldap_start_tls = false\nldap_user_base = "dc=x"', {}, "in clear"),
    ('ldap_url = "ldaps://dir"', {}, "ldap_user_base"),
    ('ldap_url = "ldaps://dir"\nldap_user_base = "dc=x"\nldap_user_filter = "uid={user}"', {}, "naming {login}"),
    ('ldap_url = "ldaps://dir"\nldap_user_base = "dc=x"', {"CONFMEET_LDAP_BIND_DN": "cn=a"}, "both 'ldap_bind_dn'"),
    ('ldap_url = "ldaps://dir"\nldap_user_base = "dc=x"\nldap_ca_file = "/nonexistent.pem"', {}, "does not exist"),
    ('oidc_issuer = "http://id.example.org"\noidc_client_id = "c"', {}, "http:// only on loopback"),
    ('oidc_issuer = "https://id.example.org"', {}, "oidc_client_id"),
    ('oidc_issuer = "https://id.example.org"\noidc_client_id = "c"\noidc_scopes = "email"', {}, "include openid"),
    ('oidc_issuer = "https://id.example.org"\noidc_client_id = "c"\nhost = "0.0.0.0"', {}, "set public_url"),
])
def test_wrong_settings_say_what_to_fix(tmp_path: Path, content: str, env: dict, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, env=env)


def test_missing_named_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_secrets_are_generated_once_private_and_masked(tmp_path: Path) -> None:
    s = ensure_secrets(load_settings(None, env={"CONFMEET_DATA_DIR": str(tmp_path),
                                                "CONFMEET_DATABASE": "postgresql://u:pw@db/confmeet"}))
    path = tmp_path / "secrets.toml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(s.secret_key) > 40 and s.secret_key != s.turn_secret
    again = ensure_secrets(load_settings(None, env={"CONFMEET_DATA_DIR": str(tmp_path)}))
    assert again.secret_key == s.secret_key
    shown = s.effective()
    assert shown["secret_key"] == "********" and s.secret_key not in str(shown)
    assert shown["database"] == "postgresql://u:********@db/confmeet"


def test_configured_secret_wins(tmp_path: Path) -> None:
    s = ensure_secrets(load_settings(None, env={"CONFMEET_DATA_DIR": str(tmp_path), "CONFMEET_SECRET_KEY": "k" * 40}))
    assert s.secret_key == "k" * 40
