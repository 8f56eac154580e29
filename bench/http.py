"""Kiln against bare Starlette apps on the same SQLite file, in the same run.

Starts `kiln serve` (one uvicorn process) and, each in one uvicorn process with the
same TLS certificate, the two baselines of `bench/bare_app.py`:

* `data`: the same token lookup, row fetch and JSON encoding, done by calling
  Kiln's own data layer without its HTTP framework (the target's baseline);
* `sql`: hand-written SQL for the same requests, for a sense of the floor.

Drives `GET /api/v1/namespaces/{id}` and `POST /api/v1/namespaces` at concurrency 16
for 10 s each against all three, and prints requests/s, p50, p99 and the ratios.

    uv run python -m bench.http [--seconds 10] [--concurrency 16]

Target: Kiln's GET at least 0.5x the `data` baseline's requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from bench.loadgen import Result, drive, get, post
from bench.servers import serving, uvicorn_command
from tests.processes import kiln_env, run_kiln
from tests.support import free_port

TARGET_GET_RATIO = 0.5
TARGETS = ("kiln", "data", "sql")


def load(
    port: int,
    context: ssl.SSLContext,
    request: Callable[[int], bytes],
    seconds: float,
    args: argparse.Namespace,
) -> Result:
    return asyncio.run(
        drive("127.0.0.1", port, context, request, concurrency=args.concurrency, duration=seconds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data_dir = Path(tmp)
        cert, key = data_dir / "cert.pem", data_dir / "key.pem"
        env = kiln_env(
            KILN_DATA_DIR=str(data_dir), KILN_RATE_LIMIT="1000000000/hour", KILN_LOG_LEVEL="warning"
        )
        assert (
            run_kiln("users", "create", "bench", stdin="bench-password\n", env=env).returncode == 0
        )
        minted = run_kiln(
            "tokens", "create", "--user", "bench", "--scope", "namespace:read,write", env=env
        )
        auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        ports = {target: free_port() for target in TARGETS}
        base_env = {**env, "BARE_DATABASE_URL": f"sqlite:///{data_dir / 'kiln.db'}"}

        kiln_cmd = [sys.executable, "-m", "kiln", "serve", "--port", str(ports["kiln"])]
        with serving(kiln_cmd, env, f"https://127.0.0.1:{ports['kiln']}/healthz", cert):
            context = ssl.create_default_context(cafile=cert)
            namespace = httpx.post(
                f"https://127.0.0.1:{ports['kiln']}/api/v1/namespaces",
                json={"name": "bench"},
                headers=auth,
                verify=context,
            ).json()
            probe = "/api/v1/namespaces/1"
            with (
                serving(
                    uvicorn_command("bench.bare_app:data_app", ports["data"], cert, key),
                    base_env,
                    f"https://127.0.0.1:{ports['data']}{probe}",
                    cert,
                ),
                serving(
                    uvicorn_command("bench.bare_app:sql_app", ports["sql"], cert, key),
                    base_env,
                    f"https://127.0.0.1:{ports['sql']}{probe}",
                    cert,
                ),
            ):
                results = measure(ports, context, auth, namespace["id"], args)
    report(results, args)


def measure(
    ports: dict[str, int],
    context: ssl.SSLContext,
    auth: dict[str, str],
    namespace_id: int,
    args: argparse.Namespace,
) -> dict[str, Result]:
    read = get(f"/api/v1/namespaces/{namespace_id}", "127.0.0.1", auth)
    results: dict[str, Result] = {}
    for target in TARGETS:
        load(ports[target], context, lambda _: read, 1.0, args)  # warm up
        results[f"GET {target}"] = load(ports[target], context, lambda _: read, args.seconds, args)
    for target in TARGETS:
        names = itertools.count()

        def write(_: int, prefix: str = target[0], names: Iterator[int] = names) -> bytes:
            return post(
                "/api/v1/namespaces",
                "127.0.0.1",
                auth,
                b'{"name": "%s%d"}' % (prefix.encode(), next(names)),
            )

        results[f"POST {target}"] = load(ports[target], context, write, args.seconds, args)
    return results


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    print(
        f"concurrency {args.concurrency}, {args.seconds:.0f} s a run, one process each, SQLite, TLS"
    )
    print(f"{'run':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for label, r in results.items():
        statuses = ", ".join(f"{s}x{n}" for s, n in sorted(r.statuses.items()))
        print(f"{label:<11}{r.rate:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}  {statuses}")
    for verb in ("GET", "POST"):
        kiln = results[f"{verb} kiln"].rate
        print(
            f"{verb:<5}kiln/data {kiln / results[f'{verb} data'].rate:.2f}x   "
            f"kiln/sql {kiln / results[f'{verb} sql'].rate:.2f}x"
        )
    ratio = results["GET kiln"].rate / results["GET data"].rate
    verdict = "met" if ratio >= TARGET_GET_RATIO else "MISSED"
    print(f"target: GET kiln >= {TARGET_GET_RATIO}x data: {verdict} ({ratio:.2f}x)")
    bad = {k: dict(r.statuses) for k, r in results.items() if set(r.statuses) - {200, 201}}
    if bad:
        print(f"unexpected statuses: {bad}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
