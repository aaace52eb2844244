"""`meshctl status` rows: overall state, time left, certificate source and NACK lines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from meshctl.client import AdminApiError
from meshctl.status import nack_lines, overall, status_record, time_left

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def proxy(types: dict) -> dict:
    return {
        "node_id": "sidecar~10.0.0.5~ledger.payments~payments.svc.cluster.local",
        "identity": "spiffe://cluster.local/ns/payments/sa/api",
        "namespace": "payments",
        "workload": "ledger",
        "address": "10.0.0.5",
        "protocol": "sotw",
        "connected_since": (NOW - timedelta(minutes=5)).isoformat(),
        "types": types,
    }


SYNCED = {"status": "SYNCED", "version_sent": "e.v2", "version_acked": "e.v2"}
NACKED = {"status": "NACKED", "version_sent": "e.v9", "version_acked": "e.v4", "error": "malformed IP address: x"}
STALE = {"status": "STALE", "version_sent": "e.v7", "version_acked": "e.v5"}
AGENT = {"ready": True, "svid": {"spiffe_id": "spiffe://cluster.local/ns/payments/sa/api", "serial": "ab12",
                                 "not_before": (NOW - timedelta(hours=1)).isoformat(),
                                 "not_after": (NOW + timedelta(hours=3, minutes=12)).isoformat()}}


def test_time_left_forms() -> None:
    assert time_left(NOW + timedelta(days=2, hours=4, minutes=9), NOW) == "2d4h"
    assert time_left(NOW + timedelta(hours=3, minutes=12), NOW) == "3h12m"
    assert time_left(NOW + timedelta(minutes=45), NOW) == "45m"
    assert time_left(NOW + timedelta(seconds=30), NOW) == "30s"
    assert time_left(NOW - timedelta(minutes=5), NOW) == "expired 5m ago"


def test_nack_outranks_stale_and_synced() -> None:
    assert overall({"CDS": SYNCED, "LDS": NACKED, "RDS": STALE}) == "NACKED"
    assert overall({"CDS": SYNCED, "RDS": STALE}) == "STALE"
    assert overall({"CDS": SYNCED}) == "SYNCED"
    assert overall({}) == "UNREQUESTED"


def test_record_carries_agent_certificate() -> None:
    record = status_record(proxy({"CDS": SYNCED}), AGENT, now=NOW, wide=False)

    assert record["certificate"] == {"source": "agent", **AGENT["svid"]}
    assert record["certificate_time_left"] == "3h12m"
    assert record["certificate_source"] == "agent"
    assert record["age"] == "5m"
    assert record["CDS_cell"] == "SYNCED"
    assert record["LDS_cell"] == "-"


def test_unreachable_agent_is_stated() -> None:
    error = AdminApiError("cannot reach http://10.0.0.5:15020/healthz/ready: timed out", url="x")
    record = status_record(proxy({"CDS": SYNCED}), error, now=NOW, wide=False)

    assert record["certificate"] == {"source": None, "error": str(error)}
    assert record["certificate_source"] == "unreachable"
    assert "certificate_time_left" not in record


def test_wide_cells_add_acked_version_and_error() -> None:
    record = status_record(proxy({"CDS": SYNCED, "LDS": NACKED}), AGENT, now=NOW, wide=True)

    assert record["CDS_cell"] == "SYNCED e.v2"
    assert record["LDS_cell"] == "NACKED e.v4"
    assert record["error"] == "LDS: malformed IP address: x"


def test_nack_line_names_rejected_version() -> None:
    record = status_record(proxy({"CDS": SYNCED, "LDS": NACKED}), AGENT, now=NOW, wide=False)
    assert nack_lines([record]) == ["payments/ledger LDS NACKED version e.v9: malformed IP address: x"]
