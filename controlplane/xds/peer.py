"""The SPIFFE ID of an ADS peer, from the client certificate that TLS already verified.

gRPC puts the verified peer certificate in the auth context under `x509_pem_cert`. The
certificate must also pass the X.509-SVID profile checks that the CA applies
(`controlplane.identity.svid.validate_svid`); one that does not is treated like no certificate,
so the stream is refused as unauthenticated.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from controlplane.errors import SvidError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import validate_svid
from controlplane.log import get_logger

PEM_CERT_KEY = "x509_pem_cert"

log = get_logger("xds.peer")


def peer_spiffe_id(context: Any) -> SpiffeId | None:
    """Return the verified peer's SPIFFE ID, or None without a client certificate that is an SVID."""
    pems = context.auth_context().get(PEM_CERT_KEY) or []
    if not pems:
        return None
    try:
        return validate_svid(x509.load_pem_x509_certificate(pems[0]))
    except (ValueError, SvidError) as exc:
        log.warning("xds.peer.not_svid", peer=context.peer(), error=str(exc))
        return None
