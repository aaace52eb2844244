"""The SPIFFE ID of a gRPC peer, from the client certificate that TLS already verified.

gRPC puts the verified peer certificate in the auth context under `x509_pem_cert`. An
X.509-SVID carries exactly one URI SAN, the SPIFFE ID; a certificate with none, several, or an
invalid one is no SVID and yields None.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from controlplane.errors import SpiffeIdError
from controlplane.identity.spiffe_id import SpiffeId

PEM_CERT_KEY = "x509_pem_cert"


def spiffe_id_from_pem(cert_pem: bytes) -> SpiffeId | None:
    """Return the SPIFFE ID of an X.509-SVID in PEM, or None if it is not a valid SVID."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError:
        return None


def peer_spiffe_id(context: Any) -> SpiffeId | None:
    """Return the verified peer SPIFFE ID of a grpc.aio call, or None without a client SVID."""
    pems = context.auth_context().get(PEM_CERT_KEY) or []
    return spiffe_id_from_pem(pems[0]) if pems else None
