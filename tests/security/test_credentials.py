"""Credentials: every RPC of every service against every kind of caller, and mTLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from arc.governance.v1 import governance_pb2, governance_pb2_grpc
from arc_common.auth import AUTHORIZATION, Role, TokenStore
from arc_common.server import start_server
from arc_common.settings import ServiceSettings
from tests.integration.probe_service import registration
from tests.security.suite import ProcessSuite
from tests.security.test_fuzz import SERVICES, STUBS


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSuite]:
    processes = ProcessSuite(tmp_path_factory.mktemp("credentials"))
    asyncio.run(processes.start())
    yield processes
    processes.stop()


def every_rpc() -> list[tuple[str, str, type]]:
    out = []
    for name, pb2, _grpc, service in SERVICES:
        for method in pb2.DESCRIPTOR.services_by_name[service].methods:
            out.append((name, method.name, getattr(pb2, method.input_type.name)))
    return out


def invoke(
    suite: ProcessSuite, service: str, method: str, request_cls: type, header: str | None
) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{suite.ports()[service]}") as channel:
        call = getattr(STUBS[service](channel), method)
        metadata = [("authorization", header)] if header is not None else []
        try:
            result = call(request_cls(), metadata=metadata, timeout=20)
            if hasattr(result, "__next__"):  # a stream: its first message or status
                next(result, None)
                result.cancel()
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


SERVICE_NAMES = {name: f"{pb2.DESCRIPTOR.package}.{svc}" for name, pb2, _, svc in SERVICES}
BAD_HEADERS = {
    "missing": None,
    "unknown": "Bearer not-a-token-of-ours-0123456789",
    "malformed": "Token abc",
    "empty bearer": "Bearer ",
}


@pytest.mark.parametrize(
    ("service", "method", "request_cls"), every_rpc(), ids=[f"{s}.{m}" for s, m, _ in every_rpc()]
)
def test_role_matrix(suite: ProcessSuite, service: str, method: str, request_cls: type) -> None:
    tokens = TokenStore.load(suite.home)
    full = (
        f"/{dict((n, f'{p.DESCRIPTOR.package}.{s}') for n, p, _, s in SERVICES)[service]}/{method}"
    )
    for label, header in BAD_HEADERS.items():
        code, _ = invoke(suite, service, method, request_cls, header)
        assert code == grpc.StatusCode.UNAUTHENTICATED, f"{label} token -> {code}"
    for role in Role:
        code, details = invoke(
            suite, service, method, request_cls, f"Bearer {tokens.token_for(role)}"
        )
        role_refused = code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in details
        if role in AUTHORIZATION[full]:
            assert not role_refused, f"{role.value} refused on {full}: {details}"
            assert code != grpc.StatusCode.UNAUTHENTICATED
        else:
            assert role_refused, f"{role.value} got {code.name} on {full}, outside the table"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def test_mtls_handshake_rules(tmp_path: Path) -> None:
    ca_key, other_key = _key(), _key()
    ca = _cert("arc-ca", ca_key, None, None, ca=True)
    other_ca = _cert("other-ca", other_key, None, None, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, ca, ca_key, ca=False)
    client = _cert("scheduler", client_key, ca, ca_key, ca=False)
    rogue = _cert("rogue", rogue_key, other_ca, other_key, ca=False)
    files = {"ca.pem": _pem(ca), "server.pem": _pem(server), "server.key": _key_pem(server_key)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tokens = TokenStore.ensure(tmp_path)
    settings = ServiceSettings(
        home=tmp_path,
        port=0,
        host="127.0.0.1",
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server.key",
        tls_client_ca_file=tmp_path / "ca.pem",
    )
    handle = await start_server(settings, [registration()], tokens=tokens)
    target = f"localhost:{handle.port}"
    token = tokens.token_for(Role.AGENT)

    async def attempt(credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
        channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials
            else grpc.aio.insecure_channel(target)
        )
        async with channel:
            stub = governance_pb2_grpc.GovernanceServiceStub(channel)
            try:
                await stub.GetMode(
                    governance_pb2.GetModeRequest(),
                    timeout=5,
                    metadata=[("authorization", f"Bearer {token}")],
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    try:
        assert await attempt(None) == grpc.StatusCode.UNAVAILABLE  # plaintext
        assert await attempt(grpc.ssl_channel_credentials(_pem(ca))) == (
            grpc.StatusCode.UNAVAILABLE  # no client certificate
        )
        assert (
            await attempt(grpc.ssl_channel_credentials(_pem(ca), _key_pem(rogue_key), _pem(rogue)))
            == grpc.StatusCode.UNAVAILABLE
        )
        assert (
            await attempt(
                grpc.ssl_channel_credentials(_pem(ca), _key_pem(client_key), _pem(client))
            )
            == grpc.StatusCode.OK
        )
    finally:
        await handle.stop(0)
