"""`controlplane serve` as a process: first start, admin endpoints, a real CSR, SIGTERM."""

from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.api import ca_pb2, ca_pb2_grpc

CONTROLPLANE = str(Path(sys.executable).with_name("controlplane"))
LEDGER = "spiffe://example.org/ns/payments/sa/ledger"
START_TIMEOUT = 30
SERVING_LINE = re.compile(r"serving: grpc-mtls port (\d+), grpc-bootstrap port (\d+), admin port (\d+)")


class ServeProcess:
    """A `controlplane serve` child process and the lines it printed on stdout."""

    def __init__(self, ca_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                CONTROLPLANE, "serve", "--ca-dir", str(ca_dir), "--trust-domain", "example.org",
                "--grpc-address", "127.0.0.1:0", "--bootstrap-address", "127.0.0.1:0",
                "--admin-address", "127.0.0.1:0", *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for_serving(self) -> tuple[int, int, int]:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = SERVING_LINE.search(line)
            if match:
                return int(match[1]), int(match[2]), int(match[3])
        self.kill()
        pytest.fail(f"controlplane serve did not start; stdout {self.lines}, stderr:\n{self.process.stderr.read()}")

    def terminate(self, timeout: float = 15) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        stdout, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + stdout, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


@pytest.fixture
def serve_process(tmp_path):
    started: list[ServeProcess] = []

    def start(*extra: str) -> ServeProcess:
        process = ServeProcess(tmp_path / "ca", *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def request_certificate(bootstrap_port: int, roots_pem: bytes, token: str) -> ca_pb2.CreateCertificateResponse:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    request = ca_pb2.CreateCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode())
    credentials = grpc.ssl_channel_credentials(roots_pem)
    with grpc.secure_channel(f"127.0.0.1:{bootstrap_port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        stub = ca_pb2_grpc.CertificateServiceStub(channel)
        return stub.CreateCertificate(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)


def test_serve_lifecycle_from_first_start(serve_process, tmp_path):
    process = serve_process()
    _mtls_port, bootstrap_port, admin_port = process.wait_for_serving()

    assert process.lines[0] == f"created a new CA for trust domain example.org in {tmp_path / 'ca'}\n"
    assert http_get(admin_port, "/healthz") == (200, "ok\n")
    assert http_get(admin_port, "/readyz") == (200, "ready\nok: source\nok: ca\n")

    token = subprocess.run(
        [CONTROLPLANE, "token", "create", "--ca-dir", str(tmp_path / "ca"), "--spiffe-id", LEDGER],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    response = request_certificate(bootstrap_port, (tmp_path / "ca" / "root-cert.pem").read_bytes(), token)
    assert response.spiffe_id == LEDGER

    status, metrics = http_get(admin_port, "/metrics")
    assert status == 200
    assert 'idmesh_ca_certificates_issued_total{result="issued"} 1.0' in metrics.splitlines()
    assert 'idmesh_ca_certificates_issued_total{result="unauthenticated"} 0.0' in metrics.splitlines()
    assert "idmesh_ca_sign_seconds_count 1.0" in metrics.splitlines()

    returncode, _stdout, stderr = process.terminate()
    assert returncode == 0, stderr
    assert "server.shutdown.complete" in stderr
    assert token not in stderr
    assert "PRIVATE KEY" not in stderr


def test_serve_loads_existing_ca_on_second_start(serve_process, tmp_path):
    first = serve_process()
    first.wait_for_serving()
    first.terminate()
    root_before = (tmp_path / "ca" / "root-cert.pem").read_bytes()

    second = serve_process("--log-format", "json")
    second.wait_for_serving()
    returncode, stdout, stderr = second.terminate()

    assert returncode == 0, stderr
    assert "created a new CA" not in stdout
    assert (tmp_path / "ca" / "root-cert.pem").read_bytes() == root_before
    assert '"event": "server.shutdown.complete"' in stderr


def test_serve_port_in_use_fails_with_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                CONTROLPLANE, "serve", "--ca-dir", str(tmp_path / "ca"), "--trust-domain", "example.org",
                "--grpc-address", "127.0.0.1:0", "--bootstrap-address", "127.0.0.1:0",
                "--admin-address", f"127.0.0.1:{port}",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"controlplane: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_serve_invalid_address_is_usage_error(tmp_path):
    result = subprocess.run(
        [CONTROLPLANE, "serve", "--ca-dir", str(tmp_path / "ca"), "--admin-address", "15014"],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 2
    assert result.stderr == (
        "controlplane serve: error: argument --admin-address: address '15014' is not HOST:PORT with a port "
        "from 0 to 65535 (see 'controlplane serve --help')\n"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "one of the arguments --ca-dir --ca-secret is required"),
        (("--ca-dir", "ca", "--ca-secret", "idmesh-ca"), "argument --ca-secret: not allowed with argument --ca-dir"),
        (("--ca-secret", "idmesh-ca"),
         "--ca-secret needs --source kubernetes, but the source is 'none'; use --ca-dir for other sources"),
        (("--ca-dir", "ca", "--webhook-address", "127.0.0.1:0"),
         "--webhook-address needs --source kubernetes, but the source is 'none': "
         "the webhook reads namespace labels from the Kubernetes API"),
        (("--ca-secret", "Idmesh_CA", "--source", "kubernetes"),
         "argument --ca-secret: invalid Secret name 'Idmesh_CA': use lower case letters, digits, '-' and '.', "
         "starting and ending with a letter or digit"),
    ],
)
def test_serve_ca_and_webhook_usage_errors(tmp_path, arguments, message):
    result = subprocess.run(
        [CONTROLPLANE, "serve", *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 2
    assert result.stderr == f"controlplane serve: error: {message} (see 'controlplane serve --help')\n"
    assert not (tmp_path / "ca").exists()


def test_serve_rejects_existing_ca_of_another_trust_domain(tmp_path):
    ca_dir = tmp_path / "ca"
    subprocess.run([CONTROLPLANE, "ca", "init", "--ca-dir", str(ca_dir), "--trust-domain", "cluster.local"],
                   capture_output=True, text=True, timeout=60, check=True)

    result = subprocess.run(
        [
            CONTROLPLANE, "serve", "--ca-dir", str(ca_dir), "--trust-domain", "example.org",
            "--grpc-address", "127.0.0.1:0", "--bootstrap-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 1
    assert result.stderr == (
        f"controlplane: error: the CA in {ca_dir} is for trust domain cluster.local, not example.org; "
        "leave out --trust-domain to serve the CA's own, or use a CA directory for example.org\n"
    )
