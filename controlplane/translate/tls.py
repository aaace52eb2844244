"""TLS contexts and the SDS references inside them.

Envoy keys an SDS subscription by the secret name and the bytes of its `sds_config`. If those
bytes change between two pushes, Envoy opens a new subscription that may never be answered and
the listener stays inactive. So both references are built here, from constants only, and every
listener and cluster takes a copy of the same two messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from controlplane.translate import names
from controlplane.translate.resources import ROOTCA_SECRET, SDS_CLUSTER, WORKLOAD_SECRET

V3 = config_source_pb2.ApiVersion.V3
ALPN_HTTP = ("h2", "http/1.1")


def _workload_certificate_sds() -> secret_pb2.SdsSecretConfig:
    """`default`: the workload's certificate and key, from the agent over the `sds-grpc` socket."""
    source = config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.ApiType.GRPC,
            transport_api_version=V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
            set_node_on_first_message_only=True,
        ),
        resource_api_version=V3,
    )
    return secret_pb2.SdsSecretConfig(name=WORKLOAD_SECRET, sds_config=source)


def _trust_bundle_sds() -> secret_pb2.SdsSecretConfig:
    """`ROOTCA`: the trust bundle, from the control plane over the ADS stream."""
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=V3
    )
    return secret_pb2.SdsSecretConfig(name=ROOTCA_SECRET, sds_config=source)


# Built once; callers receive copies (CopyFrom), never a message they could mutate in place.
_WORKLOAD_CERTIFICATE_SDS = _workload_certificate_sds()
_TRUST_BUNDLE_SDS = _trust_bundle_sds()


def workload_certificate_sds() -> secret_pb2.SdsSecretConfig:
    copy = secret_pb2.SdsSecretConfig()
    copy.CopyFrom(_WORKLOAD_CERTIFICATE_SDS)
    return copy


def trust_bundle_sds() -> secret_pb2.SdsSecretConfig:
    copy = secret_pb2.SdsSecretConfig()
    copy.CopyFrom(_TRUST_BUNDLE_SDS)
    return copy


def uri_san_matchers(
    *, exact: Iterable[str] = (), prefixes: Iterable[str] = ()
) -> list[common_pb2.SubjectAltNameMatcher]:
    """URI SAN matchers: exact SPIFFE IDs, or SPIFFE ID prefixes such as a trust domain."""
    uri = common_pb2.SubjectAltNameMatcher.SanType.URI
    matchers = [
        common_pb2.SubjectAltNameMatcher(san_type=uri, matcher=string_pb2.StringMatcher(exact=value))
        for value in exact
    ]
    matchers += [
        common_pb2.SubjectAltNameMatcher(san_type=uri, matcher=string_pb2.StringMatcher(prefix=value))
        for value in prefixes
    ]
    return matchers


def _common_context(
    san_matchers: list[common_pb2.SubjectAltNameMatcher], alpn: Iterable[str]
) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TlsProtocol.TLSv1_2,
            tls_maximum_protocol_version=common_pb2.TlsParameters.TlsProtocol.TLSv1_3,
        ),
        tls_certificate_sds_secret_configs=[workload_certificate_sds()],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=san_matchers
            ),
            validation_context_sds_secret_config=trust_bundle_sds(),
        ),
        alpn_protocols=list(alpn),
    )


def downstream_tls_socket(
    *, trust_domains: Iterable[str], alpn: Iterable[str] = ()
) -> base_pb2.TransportSocket:
    """Server side of mutual TLS on an inbound chain.

    A client certificate is required and must chain to `ROOTCA` and carry a SPIFFE ID in one of
    `trust_domains`. Which principals may call is left to the RBAC filters.
    """
    prefixes = [f"spiffe://{domain}/" for domain in trust_domains]
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common_context(uri_san_matchers(prefixes=prefixes), alpn),
    )
    context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=names.TLS_TRANSPORT_SOCKET, typed_config=names.pack(context))


def upstream_tls_socket(
    *, spiffe_ids: Iterable[str], sni: str, alpn: Iterable[str] = ()
) -> base_pb2.TransportSocket:
    """Client side of mutual TLS to a service: the peer must present one of `spiffe_ids`."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=_common_context(uri_san_matchers(exact=spiffe_ids), alpn),
        sni=sni,
    )
    return base_pb2.TransportSocket(name=names.TLS_TRANSPORT_SOCKET, typed_config=names.pack(context))
