"""Exact RBAC filter output for small policies, and byte-for-byte determinism."""

from __future__ import annotations

from google.protobuf import text_format
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from controlplane.model.types import AuthorizationPolicy, Condition, MeshConfig, Operation, Rule, Source
from controlplane.translate.rbac import http_rbac_filters, network_rbac_filters

CONFIG = MeshConfig(trust_domain="example.org", trust_domain_aliases=("legacy.example",))


def http_text(policies) -> list[tuple[str, str]]:
    out = []
    for item in http_rbac_filters(policies, port=8080, config=CONFIG):
        assert item.typed_config.type_url == "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        config = http_rbac_pb2.RBAC()
        item.typed_config.Unpack(config)
        out.append((item.name, text_format.MessageToString(config)))
    return out


def network_text(policies, port: int) -> list[tuple[str, str]]:
    out = []
    for item in network_rbac_filters(policies, port=port, config=CONFIG):
        assert item.typed_config.type_url == "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
        config = network_rbac_pb2.RBAC()
        item.typed_config.Unpack(config)
        out.append((item.name, text_format.MessageToString(config)))
    return out


def test_allow_with_no_rules_is_an_empty_allow_filter():
    assert http_text([AuthorizationPolicy("ledger", "deny-all")]) == [
        ("idmesh.rbac.allow", 'rules {\n}\nrules_stat_prefix: "idmesh_allow_"\n'),
    ]


def test_deny_with_no_rules_emits_no_filter():
    assert http_text([AuthorizationPolicy("ledger", "nothing", action="DENY")]) == []


def test_allow_namespace_and_path():
    policy = AuthorizationPolicy(
        "ledger",
        "allow-settle",
        rules=(Rule(sources=(Source(namespaces=("payments",)),), operations=(Operation(paths=("/settle*",)),)),),
    )
    expected = """rules {
  policies {
    key: "ns[ledger]-policy[allow-settle]-rule[0]"
    value {
      permissions {
        url_path {
          path {
            prefix: "/settle"
          }
        }
      }
      principals {
        authenticated {
          principal_name {
            safe_regex {
              regex: ".*/ns/payments/.*"
            }
          }
        }
      }
    }
  }
}
rules_stat_prefix: "idmesh_allow_"
"""
    assert http_text([policy]) == [("idmesh.rbac.allow", expected)]


def test_deny_principal_with_alias_and_not_method():
    policy = AuthorizationPolicy(
        "ledger",
        "deny-api",
        action="DENY",
        rules=(
            Rule(
                sources=(Source(principals=("cluster.local/ns/shop/sa/api",)),),
                operations=(Operation(not_methods=("GET",)),),
            ),
        ),
    )
    expected = """rules {
  action: DENY
  policies {
    key: "ns[ledger]-policy[deny-api]-rule[0]"
    value {
      permissions {
        not_rule {
          header {
            name: ":method"
            string_match {
              exact: "GET"
            }
          }
        }
      }
      principals {
        or_ids {
          ids {
            authenticated {
              principal_name {
                exact: "spiffe://example.org/ns/shop/sa/api"
              }
            }
          }
          ids {
            authenticated {
              principal_name {
                exact: "spiffe://legacy.example/ns/shop/sa/api"
              }
            }
          }
        }
      }
    }
  }
}
rules_stat_prefix: "idmesh_deny_"
"""
    assert http_text([policy]) == [("idmesh.rbac.deny", expected)]


def test_dry_run_audit_and_fail_closed_filter_order():
    policies = [
        AuthorizationPolicy("ledger", "allow-all", rules=(Rule(),)),
        AuthorizationPolicy("ledger", "audit-all", action="AUDIT", rules=(Rule(),)),
        AuthorizationPolicy("ledger", "broken", error="bad value"),
        AuthorizationPolicy("ledger", "try-deny", action="DENY", rules=(Rule(),), dry_run=True),
    ]
    any_policy = "    value {\n      permissions {\n        any: true\n      }\n      principals {\n        any: true\n      }\n    }\n"
    assert http_text(policies) == [
        (
            "idmesh.rbac.dry_run.ledger.try-deny",
            'shadow_rules {\n  action: DENY\n  policies {\n    key: "ns[ledger]-policy[try-deny]-rule[0]"\n'
            + any_policy
            + '  }\n}\nshadow_rules_stat_prefix: "idmesh_dry_run_ledger_try-deny_"\n',
        ),
        (
            "idmesh.rbac.audit",
            'rules {\n  action: LOG\n  policies {\n    key: "ns[ledger]-policy[audit-all]-rule[0]"\n'
            + any_policy
            + '  }\n}\nrules_stat_prefix: "idmesh_audit_"\n',
        ),
        (
            "idmesh.rbac.deny",
            'rules {\n  action: DENY\n  policies {\n    key: "ns[ledger]-policy[broken]-fail-closed"\n'
            + any_policy
            + '  }\n}\nrules_stat_prefix: "idmesh_deny_"\n',
        ),
        (
            "idmesh.rbac.allow",
            'rules {\n  policies {\n    key: "ns[ledger]-policy[allow-all]-rule[0]"\n'
            + any_policy
            + '  }\n}\nrules_stat_prefix: "idmesh_allow_"\n',
        ),
    ]


def test_network_filter_with_port_and_ip_condition():
    policy = AuthorizationPolicy(
        "ledger",
        "allow-db",
        rules=(
            Rule(
                operations=(Operation(ports=("5432",)),),
                conditions=(Condition("source.ip", ("10.1.0.0/16",)),),
            ),
        ),
    )
    expected = """rules {
  policies {
    key: "ns[ledger]-policy[allow-db]-rule[0]"
    value {
      permissions {
        destination_port: 5432
      }
      principals {
        direct_remote_ip {
          address_prefix: "10.1.0.0"
          prefix_len {
            value: 16
          }
        }
      }
    }
  }
}
stat_prefix: "inbound_5432.idmesh_allow."
"""
    assert network_text([policy], 5432) == [("idmesh.rbac.allow", expected)]


def test_output_is_byte_identical_for_equal_input():
    def build(order):
        policies = [
            AuthorizationPolicy(
                "ledger",
                f"p{index}",
                action=("ALLOW", "DENY", "AUDIT")[index % 3],
                rules=tuple(
                    Rule(
                        sources=(Source(principals=(f"cluster.local/ns/n{r}/sa/s",), namespaces=("a", "b")),),
                        operations=(Operation(methods=("GET", "PUT"), paths=("/x*",), ports=("80",)),),
                        conditions=(Condition("request.headers[x-a]", ("1", "2")),),
                    )
                    for r in range(4)
                ),
                dry_run=index == 5,
            )
            for index in order
        ]
        http_bytes = [f.SerializeToString(deterministic=True) for f in http_rbac_filters(policies, port=80, config=CONFIG)]
        network_bytes = [
            f.SerializeToString(deterministic=True) for f in network_rbac_filters(policies, port=80, config=CONFIG)
        ]
        return http_bytes, network_bytes

    first = build(range(12))
    assert build(range(12)) == first
    # Policy order does not change the output either: maps serialize sorted by key.
    assert build(reversed(range(12))) == first
    assert len(first[0]) == 4
