"""Access logs on inbound chains: one JSON line per request (HTTP) or connection (TCP).

Each line names the verified caller (`peer_principal`, the URI SAN of its certificate) and that
certificate's serial, so an operator can tie a request to the SVID that made it. A request the
RBAC filter denied shows `rbac_access_denied_matched_policy[...]` in `response_code_details`
(HTTP) or `connection_termination_details` (TCP), as Envoy's RBAC filters document. Results of
dry-run policies, which Envoy evaluates as shadow rules, appear under `rbac_shadow`.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from google.protobuf import struct_pb2

from controlplane.translate import names

_COMMON_FIELDS = {
    "start_time": "%START_TIME%",
    "duration_ms": "%DURATION%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "peer_principal": "%DOWNSTREAM_PEER_URI_SAN%",
    "peer_certificate_serial": "%DOWNSTREAM_PEER_SERIAL%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "response_flags": "%RESPONSE_FLAGS%",
}

_HTTP_FIELDS = {
    **_COMMON_FIELDS,
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "rbac": "%DYNAMIC_METADATA(envoy.filters.http.rbac)%",
}

_TCP_FIELDS = {
    **_COMMON_FIELDS,
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "rbac": "%DYNAMIC_METADATA(envoy.filters.network.rbac)%",
}


def _file_access_log(path: str, fields: dict[str, str]) -> accesslog_pb2.AccessLog:
    json_format = struct_pb2.Struct()
    json_format.update(fields)
    config = file_pb2.FileAccessLog(
        path=path,
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format),
    )
    return accesslog_pb2.AccessLog(name=names.FILE_ACCESS_LOG, typed_config=names.pack(config))


def http_access_log(path: str) -> accesslog_pb2.AccessLog:
    return _file_access_log(path, _HTTP_FIELDS)


def tcp_access_log(path: str) -> accesslog_pb2.AccessLog:
    return _file_access_log(path, _TCP_FIELDS)
