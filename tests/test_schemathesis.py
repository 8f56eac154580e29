"""Schemathesis over every operation of the contract, against a real `kiln serve`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.core import spec
from tests.processes import REPO, KilnServe, kiln_env, run_kiln

EXAMPLES = 100  # per operation, as the contract issue asks
# A generous budget per generated request (each is a real HTTPS round trip that the
# server validates twice), so that the limit scales with the contract, not the clock.
SECONDS_PER_EXAMPLE = 0.15
BUDGET = len(spec.operations()) * EXAMPLES * SECONDS_PER_EXAMPLE + 120

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUDGET + 60)]

FUZZ_ENV = {
    "KILN_RATE_LIMIT": "100000000/hour",
    "KILN_ANONYMOUS_RATE_LIMIT": "100000000/hour",
    "KILN_PASSWORD_RATE_LIMIT": "100000/minute",
    "KILN_VALIDATE_RESPONSES": "true",
}


def test_schemathesis_finds_no_failures(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = kiln_env(**FUZZ_ENV)
    created = run_kiln(
        "users", "create", "fuzzer", "--data-dir", str(data_dir), stdin="fuzz-pass\n", env=env
    )
    assert created.returncode == 0, created.stderr
    with KilnServe(data_dir, env=env) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{server.base_url}/openapi.json",
                "--tls-verify",
                str(server.cert),
                "--max-examples",
                str(EXAMPLES),
                # One worker: CPython 3.11 can raise "AST constructor recursion depth
                # mismatch" when Hypothesis parses lambdas in two threads at once.
                "--workers",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={
                **env,
                "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
                "KILN_FUZZ_URL": server.base_url,
                "KILN_FUZZ_USER": "fuzzer",
                "KILN_FUZZ_PASSWORD": "fuzz-pass",
                "KILN_FUZZ_CA": str(server.cert),
            },
            timeout=BUDGET,
            check=False,
        )
        report = result.stdout + result.stderr
        print(report)
        assert result.returncode == 0, report[-20000:]
        covered = re.search(r"API Links:\s+(\d+) covered", report)
        assert covered is not None
        assert int(covered.group(1)) > 0, "the stateful phase followed no link"
        assert "Traceback" not in server.output, server.output[-20000:]
