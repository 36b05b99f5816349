"""The served OpenAPI schema, fuzzed by schemathesis with `--checks all` against a real server process,
within a time budget: no 5xx, every status documented, responses as documented, schema-valid requests
accepted (tests/service/schemathesis.toml: but for image bytes and tensor data a schema cannot describe),
invalid ones refused, security as configured. It reads the schema the app serves, so routes added
later are fuzzed too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_service_process import server

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis(base: str, seconds: int, *args: str) -> subprocess.CompletedProcess:
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(CONFIG), "run", base + "/openapi.json", "--checks", "all",
           "--max-examples", "25", "--max-time", str(seconds), "--seed", "1", "--request-timeout", "20",
           "--workers", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)


def test_fuzzed_schema_without_keys(tiny_repo, tmp_path):
    with server(tmp_path, tiny_repo, "--no-access-log") as p:
        spec = httpx.get(p.base + "/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert all("security" not in op for item in spec["paths"].values() for op in item.values())
        r = schemathesis(p.base, 40)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
    assert "Traceback" not in p.text(), p.text()


def test_fuzzed_schema_with_keys(tiny_repo, tmp_path):
    with server(tmp_path, tiny_repo, "--no-access-log", "--api-keys", "k1") as p:
        spec = httpx.get(p.base + "/openapi.json").json()
        assert spec["paths"]["/segment"]["post"]["security"] and "401" in spec["paths"]["/segment"]["post"]["responses"]
        assert "security" not in spec["paths"]["/health/ready"]["get"]
        r = schemathesis(p.base, 20, "-H", "Authorization: Bearer k1")
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
