"""How long `kiln serve` takes from the command to its first 200 on /healthz.

Each round starts `kiln serve` three ways, stopping it after its first answer:

* first: a new data directory and an empty cache directory (`XDG_CACHE_HOME`), as on
  a new machine: migrations, certificate, admin, contract and bytecode all made;
* later: the same data and cache directories again, as every start after that;
* bare: `bench/bare_startup.py`, a Starlette app with only /healthz, in one uvicorn
  process over the same TLS certificate, its bytecode cached too (the baseline).

Readiness is polled as every benchmark here polls it (`bench.servers.serving`).

    uv run python -m bench.startup [--rounds 5]

Target: a later start in under 2 s (median).
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.servers import serving, uvicorn_command
from tests.processes import kiln_env
from tests.support import free_port

TARGET_LATER_SECONDS = 2.0
KINDS = ("first", "later", "bare")


def kiln_command(port: int) -> list[str]:
    return [sys.executable, "-m", "kiln", "serve", "--port", str(port)]


def time_to_first_answer(command: list[str], env: dict[str, str], port: int, ca: Path) -> float:
    """Seconds from starting `command` to its first answer on /healthz, which must be 200."""
    probe = f"https://127.0.0.1:{port}/healthz"
    started = time.monotonic()
    with serving(command, env, probe, ca):
        elapsed = time.monotonic() - started
        status = httpx.get(probe, verify=ssl.create_default_context(cafile=ca)).status_code
        if status != 200:
            raise SystemExit(f"{' '.join(command)} answered /healthz with {status}")
    return elapsed


def one_round(root: Path, bare_env: dict[str, str]) -> dict[str, float]:
    data_dir = root / "data"
    env = kiln_env(
        KILN_DATA_DIR=str(data_dir), KILN_LOG_LEVEL="warning", XDG_CACHE_HOME=str(root / "cache")
    )
    cert, key = data_dir / "cert.pem", data_dir / "key.pem"
    port = free_port()
    times = {
        "first": time_to_first_answer(kiln_command(port), env, port, cert),
        "later": time_to_first_answer(kiln_command(port), env, port, cert),
    }
    bare = uvicorn_command("bench.bare_startup:app", port, cert, key)
    times["bare"] = time_to_first_answer(bare, bare_env, port, cert)
    return times


def bare_environment(directory: Path) -> dict[str, str]:
    """Bytecode cached for the baseline as `kiln serve` caches its own."""
    env = kiln_env(PYTHONPYCACHEPREFIX=str(directory / "bytecode"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    results: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        bare_env = bare_environment(Path(tmp))
        one_round(Path(tmp) / "warm-up", bare_env)  # the baseline's bytecode, not measured
        for n in range(args.rounds):
            for kind, seconds in one_round(Path(tmp) / f"round-{n}", bare_env).items():
                results[kind].append(seconds)
    report(results, args.rounds)


def report(results: dict[str, list[float]], rounds: int) -> None:
    print(f"kiln serve, command to first 200 on /healthz over TLS, {rounds} rounds, seconds")
    print(f"{'start':<8}{'min':>8}{'median':>8}{'max':>8}")
    for kind, times in results.items():
        print(f"{kind:<8}{min(times):>8.2f}{statistics.median(times):>8.2f}{max(times):>8.2f}")
    later, bare = statistics.median(results["later"]), statistics.median(results["bare"])
    first = statistics.median(results["first"])
    print(f"later/bare {later / bare:.2f}x   first/bare {first / bare:.2f}x")
    verdict = "met" if later < TARGET_LATER_SECONDS else "MISSED"
    print(f"target: later start < {TARGET_LATER_SECONDS:.0f} s: {verdict} ({later:.2f} s)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
