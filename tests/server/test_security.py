"""Admin APIs locked with a key while inference stays open, against the real server (gRPC and HTTP)."""

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cascade import contract
from cascade.errors import Forbidden, InvalidInput
from cascade.server.launcher import ServerOptions, server_command
from cascade_client import CascadeClient

KEY = "s3cret-key"


def test_admin_key_restricts_the_admin_protocols_only():
    opts = ServerOptions(repository=Path("/r"), admin_key=KEY, gpu=False)
    cmd = server_command(opts, Path("/opt/tritonserver/bin/tritonserver"), supported=None)
    restriction = f"{','.join(contract.RESTRICTED_PROTOCOLS)}:{contract.ADMIN_HEADER}={KEY}"
    assert f"--grpc-restricted-protocol={restriction}" in cmd and f"--http-restricted-api={restriction}" in cmd
    assert not {"inference", "health", "metadata"} & set(contract.RESTRICTED_PROTOCOLS)
    plain = server_command(ServerOptions(repository=Path("/r"), gpu=False), Path("/x/tritonserver"), supported=None)
    assert not [a for a in plain if "restricted" in a]
    for bad in ("", "has space", "a:b", "a,b", "a=b"):
        with pytest.raises(InvalidInput, match="admin key"):
            ServerOptions(repository=Path("/r"), admin_key=bad)


@pytest.fixture(scope="module")
def locked(built_repo):
    from cascade.server.launcher import TritonServer, free_ports

    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(
        repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, admin_key=KEY,
        model_control_mode="explicit",
    )  # fmt: skip
    with TritonServer(opts) as server:
        yield server


@pytest.mark.server
def test_inference_is_open_and_admin_calls_need_the_key(locked, sst2_task, monkeypatch):
    monkeypatch.delenv(contract.ADMIN_KEY_ENV, raising=False)
    with CascadeClient(locked.grpc_url) as anyone:
        assert anyone.classify(sst2_task.name, ["a fine film"])[0].label in sst2_task.labels
        with pytest.raises(Forbidden, match=f"protocol is restricted.*\\${contract.ADMIN_KEY_ENV}"):
            anyone.tasks()
        with pytest.raises(Exception, match="restricted"):
            anyone.load_models([sst2_task.name])
    with CascadeClient(locked.grpc_url, admin_key="wrong") as guesser, pytest.raises(Forbidden):
        guesser.tasks()
    with CascadeClient(locked.grpc_url, admin_key=KEY) as admin:
        assert sst2_task.name in admin.tasks()
        admin.load_models([sst2_task.name])  # reload: allowed with the key
    monkeypatch.setenv(contract.ADMIN_KEY_ENV, KEY)  # the key from the environment, as the CLI takes it
    with CascadeClient(locked.grpc_url) as admin:
        assert sst2_task.name in admin.tasks()


@pytest.mark.server
def test_the_async_client_sends_the_admin_key_as_the_sync_one(locked, sst2_task, monkeypatch):
    import asyncio

    from cascade_client import AsyncCascadeClient

    async def run(**kwargs):
        async with AsyncCascadeClient(locked.grpc_url, **kwargs) as client:
            assert (await client.classify(sst2_task.name, ["a fine film"]))[0].label in sst2_task.labels
            assert await client.labels(sst2_task.name) == list(sst2_task.labels)  # model config stays open here
            if kwargs.get("admin_key", os.environ.get(contract.ADMIN_KEY_ENV)) != KEY:
                with pytest.raises(Forbidden, match=f"protocol is restricted.*\\${contract.ADMIN_KEY_ENV}"):
                    await client.tasks()
                with pytest.raises(Exception, match="restricted"):
                    await client.load_models([sst2_task.name])
                return None
            await client.load_models([sst2_task.name])  # reload: allowed with the key
            return await client.tasks()

    monkeypatch.delenv(contract.ADMIN_KEY_ENV, raising=False)
    assert asyncio.run(run()) is None and asyncio.run(run(admin_key="wrong")) is None
    assert sst2_task.name in asyncio.run(run(admin_key=KEY))
    monkeypatch.setenv(contract.ADMIN_KEY_ENV, KEY)  # the key from the environment, as the CLI takes it
    assert sst2_task.name in asyncio.run(run())


@pytest.mark.server
def test_http_admin_api_answers_403_without_the_key(locked):
    index = f"{locked.http_url}/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(index, data=b"{}", method="POST"), timeout=10)
    assert info.value.code == 403 and contract.ADMIN_HEADER in info.value.read().decode()
    request = urllib.request.Request(index, data=b"{}", method="POST", headers={contract.ADMIN_HEADER: KEY})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{locked.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200  # health stays open for probes


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, made here (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.server
def test_grpc_over_tls_with_a_self_signed_certificate(built_repo, sst2_task, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from cascade.errors import ServerError
    from cascade.server.launcher import TritonServer, free_ports

    cert, key = self_signed(tmp_path)
    repo, _ = built_repo
    http, grpc, metrics = free_ports(3)
    opts = ServerOptions(
        repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, tls_cert=cert, tls_key=key
    )
    assert "--grpc-use-ssl=true" in server_command(opts, Path("/x/tritonserver"), supported=None)
    monkeypatch.delenv(contract.GRPC_CA_ENV, raising=False)
    with TritonServer(opts) as server:
        with CascadeClient(server.grpc_url, ssl=True, root_certificates=str(cert)) as client:
            assert client.classify(sst2_task.name, ["a fine film"])[0].label in sst2_task.labels
        with CascadeClient(server.grpc_url, timeout_s=5) as plain, pytest.raises(ServerError):
            plain.classify(sst2_task.name, ["a fine film"])  # plain gRPC is refused by a TLS server
        # The CA from the environment: the CLI, the table jobs and the Locust users all take it.
        env = {contract.GRPC_CA_ENV: str(cert)}
        monkeypatch.setenv(contract.GRPC_CA_ENV, str(cert))
        run = subprocess.run(
            [sys.executable, "-m", "cascade.cli.main", "loadtest", "easy", "--url", server.grpc_url, "--task",
             sst2_task.name, "--duration", "5", "--users", "2", "--budget-scale", "50", "--rows", "120",
             "--results-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=240, env={**os.environ, **env},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "0.00%" in run.stdout  # no failed request over TLS
    with pytest.raises(InvalidInput, match="both a certificate and its key"):
        ServerOptions(repository=repo, tls_cert=cert)
