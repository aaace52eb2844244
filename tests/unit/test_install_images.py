"""Static checks of the Dockerfiles and docker-compose.yml, which are not built here: the files
they copy and mount exist, their commands are the project's console scripts, and the arguments
they pass parse with the real command-line parsers."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from controlplane.cli import build_parser as controlplane_parser
from controlplane.injector.settings import InjectionSettings
from controlplane.install.render import load_base
from meshctl.cli import build_parser as meshctl_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.controlplane", "Dockerfile.sidecar")


def console_scripts() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(project["project"]["scripts"])


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _space, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def deployment_container() -> dict:
    (deployment,) = [obj for obj in load_base() if obj["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_sources_exist(dockerfile):
    copies = [rest.split()[:-1] for keyword, rest in instructions(dockerfile) if keyword == "COPY"]

    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"


@pytest.mark.parametrize("dockerfile,script", [("Dockerfile.controlplane", "controlplane"), ("Dockerfile.sidecar", "mesh-agent")])
def test_entrypoint_is_console_script(dockerfile, script):
    (entrypoint,) = [rest for keyword, rest in instructions(dockerfile) if keyword == "ENTRYPOINT"]

    assert yaml.safe_load(entrypoint) == [script]
    assert script in console_scripts()


@pytest.mark.parametrize("dockerfile,uid", [("Dockerfile.controlplane", "65532"), ("Dockerfile.sidecar", "1337")])
def test_images_run_as_non_root_user(dockerfile, uid):
    users = [rest for keyword, rest in instructions(dockerfile) if keyword == "USER"]

    assert users == [f"{uid}:{uid}"]


def test_manifest_user_matches_controlplane_image():
    (deployment,) = [obj for obj in load_base() if obj["kind"] == "Deployment"]

    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532


def test_sidecar_image_user_matches_injected_proxy():
    assert InjectionSettings().proxy_uid == 1337


def test_deployment_arguments_parse_with_controlplane_cli():
    args = controlplane_parser().parse_args(deployment_container()["args"])

    assert args.command == "serve"
    assert args.source == "kubernetes"
    assert args.ca_dir is None
    assert args.ca_secret == "idmesh-ca"
    assert args.webhook_address == "0.0.0.0:15017"


def test_compose_builds_from_existing_dockerfiles(compose):
    for name, service in compose["services"].items():
        assert (ROOT / service["build"]["dockerfile"]).is_file(), name
        assert service["build"]["context"] == "."


def test_compose_mounts_existing_folders(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_compose_control_plane_follows_example_folder(compose):
    service = compose["services"]["controlplane"]
    args = controlplane_parser().parse_args(service["command"])

    assert args.source == "files:/examples/payments-ledger"
    assert "./examples/payments-ledger:/examples/payments-ledger:ro" in service["volumes"]
    assert sorted((ROOT / "examples/payments-ledger").glob("*.yaml"))


def test_compose_ports_bind_loopback_only(compose):
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert re.match(r"127\.0\.0\.1:\d+:\d+$", port), port


def test_compose_demo_command_parses_with_meshctl(compose):
    service = compose["services"]["demo"]

    assert service["entrypoint"] == ["meshctl"]
    args = meshctl_parser().parse_args(service["command"])
    assert args.command == "up"


def test_compose_images_match_manifest_and_injector_defaults(compose):
    assert compose["services"]["controlplane"]["image"] == deployment_container()["image"]
    assert compose["services"]["demo"]["image"] == InjectionSettings().proxy_image
