"""`Idempotency-Key` on creates: the first result is kept in the database and replayed.

A key is the credential's that sent it (a token, or the password), so a replay goes
only to the credential that made the result; the result is kept encrypted, since it
may hold a secret (a created token's). The key is claimed in a transaction of its
own, so a concurrent request with the same key sees it in flight (409). The result is
stored in the same transaction as the resource it describes, so either both exist or
neither does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

import orjson
from connexion.lifecycle import ConnexionResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select, update

from kiln.core.principal import Principal
from kiln.core.problems import Problem
from kiln.http.hal import replay
from kiln.store.db import Database, session, utcnow
from kiln.store.secrets import SecretBox
from models import IdempotencyRecord

RETENTION = dt.timedelta(hours=24)
# A claim older than this belongs to a request that died with its process.
ABANDONED = dt.timedelta(minutes=5)
_KEPT_HEADERS = ("Location", "ETag")


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) if body is not None else b""
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


def run_once(
    db: Database,
    box: SecretBox,
    *,
    caller: Principal,
    key: str,
    request_fingerprint: str,
    operation: Callable[[], ConnexionResponse],
) -> ConnexionResponse:
    record_id, earlier = claim(db, box, caller, key, request_fingerprint)
    if earlier is not None:
        return earlier
    try:
        with db.transaction():
            response = operation()
            remember(box, record_id, response)
        return response
    except BaseException:
        release(db, record_id)
        raise


def remember(box: SecretBox, record_id: int, response: ConnexionResponse) -> None:
    """Keep a successful result, in the transaction that made what it describes."""
    if not 200 <= response.status_code < 300:
        return
    headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
    session().exec(
        update(IdempotencyRecord)
        .where(col(IdempotencyRecord.id) == record_id)
        .values(
            status=response.status_code,
            headers=orjson.dumps(headers).decode(),
            body=box.encrypt((response.body or b"").decode()),
        )
    )


def release(db: Database, record_id: int) -> None:
    """Nothing was done: free the key so the client can retry."""
    with db.transaction():
        session().exec(delete(IdempotencyRecord).where(col(IdempotencyRecord.id) == record_id))


def claim(
    db: Database, box: SecretBox, caller: Principal, key: str, request_fingerprint: str
) -> tuple[int, ConnexionResponse | None]:
    """Claim the caller's key for this request: its record id, and the earlier result to
    replay if the same request already ran. 409 while another holds it; 422 for another
    request."""
    assert caller.user_id is not None
    user_id, token_id = caller.user_id, caller.token_id
    credential = f"token:{token_id}" if token_id is not None else "password"
    now = utcnow()
    in_flight = Problem(
        "idempotency_in_flight",
        "A request with this Idempotency-Key is still running; retry later.",
        headers={"Retry-After": "1"},
    )
    try:
        with db.transaction() as s:
            s.exec(
                delete(IdempotencyRecord).where(col(IdempotencyRecord.created_at) < now - RETENTION)
            )
            record = s.exec(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.user_id == user_id,
                    IdempotencyRecord.credential == credential,
                    IdempotencyRecord.key == key,
                )
            ).one_or_none()
            if record is None:
                record = IdempotencyRecord(
                    user_id=user_id,
                    token_id=token_id,
                    credential=credential,
                    key=key,
                    fingerprint=request_fingerprint,
                )
                s.add(record)
                s.flush()
                assert record.id is not None
                return record.id, None
            assert record.id is not None
            if record.fingerprint != request_fingerprint:
                raise Problem(
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request.",
                )
            if record.status is not None:
                assert record.body is not None
                assert record.headers is not None
                body = box.decrypt(record.body).encode()
                return record.id, replay(body, orjson.loads(record.headers))
            if now - record.created_at < ABANDONED:
                raise in_flight
            record.created_at = now  # take over the abandoned claim
            return record.id, None
    except IntegrityError:
        # Another request claimed the key between our read and our insert.
        raise in_flight from None
