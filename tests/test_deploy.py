"""Deployment files: no Docker engine runs here, so check what they say agrees."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import ROOT


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> arguments of each occurrence (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            out.setdefault(instruction.upper(), []).append(args.strip())
    return out


def compose(name: str = "docker-compose.yml") -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # Compose's merge tag (`!reset []`): an empty value for yaml.
    Loader.add_constructor("!reset", lambda loader, node: [])
    return yaml.load((ROOT / name).read_text(encoding="utf-8"), Loader=Loader)


def test_dockerfile_installs_cpu_torch_then_serves_checkpoints_on_its_exposed_port():
    d = dockerfile()
    assert d["FROM"][0].startswith("python:") and "slim" in d["FROM"][0]
    runs = " ".join(d["RUN"])
    assert runs.index("download.pytorch.org/whl/cpu") < runs.index("pip install .")
    entrypoint, cmd = json.loads(d["ENTRYPOINT"][0]), json.loads(d["CMD"][0])
    argv = entrypoint + cmd
    assert argv[:3] == ["charnet", "serve", "/checkpoints"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    port = argv[argv.index("--port") + 1]
    assert d["EXPOSE"] == [port] == ["8000"]
    assert "/health" in d["HEALTHCHECK"][0] and port in d["HEALTHCHECK"][0]


def test_compose_api_and_train_services():
    services = compose()["services"]
    assert set(services) == {"api", "train"}
    api, train = services["api"], services["train"]
    assert "profiles" not in api and train["profiles"] == ["train"]
    assert api["ports"] == ["8000:8000"]
    command = api["command"]
    assert command[:2] == ["serve", "/checkpoints"] and command[command.index("--port") + 1] == "8000"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    health = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in health
    assert {"interval", "timeout", "retries"} <= set(api["healthcheck"])
    # The same checkpoints directory: train writes it, api reads it.
    api_volume, train_volume = api["volumes"][0].split(":"), train["volumes"][0].split(":")
    assert api_volume[:2] == train_volume[:2] == ["./checkpoints", "/checkpoints"]
    assert train["command"][0] == "train" and train["command"][train["command"].index("--out") + 1].startswith(
        "/checkpoints/")


def test_compose_replicas_behind_a_load_balancer():
    services = compose("docker-compose.replicas.yml")["services"]
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["api"]["ports"] == []  # replicas cannot share a host port; the balancer has it
    lb = services["lb"]
    assert lb["ports"] == ["8000:8000"] and lb["depends_on"]["api"]["condition"] == "service_healthy"
    source = lb["volumes"][0].split(":")[0]
    conf = (ROOT / source).read_text(encoding="utf-8")
    assert "server api:8000" in conf and "proxy_buffering off" in conf and "listen 8000" in conf


def test_the_proxy_absorbs_slow_clients():
    """Slow-client protection belongs to the nginx front: it reads a request in full and
    closes connections that trickle, before charnet (and its batch) sees anything."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^\s*(\w+)\s+([^;]+);", conf, flags=re.MULTILINE))
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout"):
        assert re.fullmatch(r"\d+s", settings[timeout]), timeout
    assert settings["proxy_request_buffering"] == "on" and settings["limit_conn"].startswith("per_client")
    assert "limit_conn_zone $binary_remote_addr zone=per_client" in conf
