"""Kubeconfig loading: which server, token and namespace a client ends up with, and errors
that name the file and the field."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from keel.client import KeelClient, KubeconfigError, default_kubeconfig_path, load_kubeconfig

KEEL_UP_STYLE = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "keel", "cluster": {"server": "http://127.0.0.1:7070"}}],
    "users": [{"name": "admin", "user": {"token": "s3cret"}}],
}

MULTI_CONTEXT = {
    "clusters": [
        {"name": "one", "cluster": {"server": "http://one:1"}},
        {"name": "two", "cluster": {"server": "https://two:2/", "insecure-skip-tls-verify": True}},
    ],
    "users": [
        {"name": "alice", "user": {"token": "alice-token"}},
        {"name": "bob", "user": {"token": "bob-token"}},
    ],
    "contexts": [
        {"name": "first", "context": {"cluster": "one", "user": "alice"}},
        {"name": "second", "context": {"cluster": "two", "user": "bob", "namespace": "team"}},
    ],
    "current-context": "second",
}


def write(path: Path, document: object) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_first_cluster_and_user_are_used_without_current_context(tmp_path: Path) -> None:
    config = load_kubeconfig(write(tmp_path / "kubeconfig", KEEL_UP_STYLE))
    assert config.server == "http://127.0.0.1:7070"
    assert config.token == "s3cret"
    assert config.namespace == "default"
    assert config.ssl_context() is None


def test_current_context_picks_its_cluster_user_and_namespace(tmp_path: Path) -> None:
    config = load_kubeconfig(write(tmp_path / "kubeconfig", MULTI_CONTEXT))
    assert config.server == "https://two:2"
    assert config.token == "bob-token"
    assert config.namespace == "team"
    assert config.ssl_context() is False


def test_explicit_context_overrides_current_context(tmp_path: Path) -> None:
    config = load_kubeconfig(write(tmp_path / "kubeconfig", MULTI_CONTEXT), context="first")
    assert (config.server, config.token, config.namespace) == (
        "http://one:1",
        "alice-token",
        "default",
    )


def test_default_path_is_the_env_var_then_dot_keel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEEL_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert default_kubeconfig_path() == Path(".keel/kubeconfig")
    (tmp_path / ".keel").mkdir()
    write(tmp_path / ".keel" / "kubeconfig", KEEL_UP_STYLE)
    assert load_kubeconfig().token == "s3cret"

    other = write(tmp_path / "elsewhere.yaml", MULTI_CONTEXT)
    monkeypatch.setenv("KEEL_KUBECONFIG", str(other))
    assert default_kubeconfig_path() == other
    assert load_kubeconfig().token == "bob-token"


def test_kubeconfig_env_comes_after_the_flag_and_before_dot_keel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEEL_KUBECONFIG", raising=False)
    (tmp_path / ".keel").mkdir()
    write(tmp_path / ".keel" / "kubeconfig", KEEL_UP_STYLE)
    other = write(tmp_path / "kube.yaml", MULTI_CONTEXT)
    monkeypatch.setenv("KUBECONFIG", str(other))
    assert load_kubeconfig().token == "bob-token"  # $KUBECONFIG before .keel/kubeconfig
    assert load_kubeconfig(context="first").token == "alice-token"  # --context
    flag = tmp_path / ".keel" / "kubeconfig"
    assert load_kubeconfig(flag).token == "s3cret"  # --kubeconfig before $KUBECONFIG


def test_kubeconfig_list_merges_as_kubectl_first_file_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEEL_KUBECONFIG", raising=False)
    (tmp_path / "a").mkdir()
    first = write(
        tmp_path / "a" / "config",
        {
            "clusters": [
                {
                    "name": "two",
                    "cluster": {"server": "https://first:9", "certificate-authority": "ca.pem"},
                }
            ],
            "users": [{"name": "carol", "user": {"token": "carol-token"}}],
            "contexts": [{"name": "mine", "context": {"cluster": "two", "user": "carol"}}],
        },
    )
    second = write(tmp_path / "second.yaml", MULTI_CONTEXT)
    missing = tmp_path / "missing.yaml"
    monkeypatch.setenv("KUBECONFIG", f"{missing}:{first}::{second}")
    # current-context from the second file (the first has none); cluster "two" from the first
    config = load_kubeconfig()
    assert (config.server, config.token, config.namespace) == (
        "https://first:9",
        "bob-token",
        "team",
    )
    assert config.certificate_authority == tmp_path / "a" / "ca.pem"  # relative to its file
    assert load_kubeconfig(context="mine").token == "carol-token"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(KubeconfigError, match="none of its files exists"):
        load_kubeconfig()


def test_missing_file_error_names_the_path_and_how_to_choose_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEEL_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(
        KubeconfigError, match=r"\.keel/kubeconfig: no such kubeconfig.*KEEL_KUBECONFIG"
    ):
        load_kubeconfig()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"clusters": [{"name": "x", "cluster": {}}]}, r"clusters\[0\]\.cluster\.server: missing"),
        ({"users": []}, r"clusters: missing or empty"),
        (
            {"clusters": [{"name": "x", "cluster": {"server": "127.0.0.1:7070"}}]},
            r"clusters\[0\]\.cluster\.server: expected an http\(s\) URL",
        ),
        ({**MULTI_CONTEXT, "current-context": "nope"}, r"contexts: no entry named 'nope'"),
        (["not", "a", "mapping"], r"\$: expected a mapping"),
        (
            {**KEEL_UP_STYLE, "users": [{"name": "a", "user": {"token": 7}}]},
            r"users\[0\]\.user\.token: expected a string",
        ),
    ],
)
def test_bad_kubeconfig_error_names_the_file_and_field(
    tmp_path: Path, document: object, message: str
) -> None:
    path = write(tmp_path / "kubeconfig", document)
    with pytest.raises(KubeconfigError, match=message) as caught:
        load_kubeconfig(path)
    assert str(caught.value).startswith(str(path))


def test_invalid_yaml_is_reported_as_a_kubeconfig_error(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeconfigError, match="not valid YAML"):
        load_kubeconfig(path)


def test_token_file_and_relative_ca_are_resolved_next_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    document = {
        "clusters": [
            {"name": "c", "cluster": {"server": "https://h:1", "certificate-authority": "ca.pem"}}
        ],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
    }
    config = load_kubeconfig(write(tmp_path / "kubeconfig", document))
    assert config.token == "from-file"
    assert config.certificate_authority == tmp_path / "ca.pem"


def test_certificate_authority_data_must_be_base64(tmp_path: Path) -> None:
    document = {
        "clusters": [
            {"name": "c", "cluster": {"server": "https://h:1", "certificate-authority-data": "%%%"}}
        ],
    }
    with pytest.raises(KubeconfigError, match="certificate-authority-data: not base64"):
        load_kubeconfig(write(tmp_path / "kubeconfig", document))


def test_certificate_authority_data_becomes_a_verifying_ssl_context(tmp_path: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=keel-test",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "ca.pem"),
        ],
        check=True,
        capture_output=True,
    )
    pem = (tmp_path / "ca.pem").read_bytes()
    cluster = {
        "server": "https://h:1",
        "certificate-authority-data": base64.b64encode(pem).decode(),
    }
    document = {"clusters": [{"name": "c", "cluster": cluster}]}
    made = load_kubeconfig(write(tmp_path / "kubeconfig", document)).ssl_context()
    assert isinstance(made, ssl.SSLContext)
    assert made.verify_mode == ssl.CERT_REQUIRED
    assert [cert["subject"] for cert in made.get_ca_certs()] == [((("commonName", "keel-test"),),)]


async def test_client_from_kubeconfig_uses_its_server_and_namespace(tmp_path: Path) -> None:
    path = write(tmp_path / "kubeconfig", MULTI_CONTEXT)
    async with KeelClient.from_kubeconfig(path) as client:
        assert client.server == "https://two:2"
        assert client.namespace == "team"
