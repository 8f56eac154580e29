"""token:read, token:write and token:delete scopes for managing tokens

Revision ID: d08dcd113600
Revises: 1b4edbe927ab
Create Date: 2026-11-22 10:13:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'd08dcd113600'
down_revision: str | None = '1b4edbe927ab'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every scope there was before these: a token that held them all, unnarrowed, could manage
# tokens, and keeps that (the first start's admin token, say). Any other token loses it.
_EARLIER = {
    f'{resource}:{permission}'
    for resource in ('build', 'cron', 'image', 'invite', 'key', 'namespace', 'object',
                     'variable', 'webhook')
    for permission in ('read', 'write', 'delete')
}
_MANAGING = ['token:read', 'token:write', 'token:delete']
_tokens = sa.table(
    'tokens',
    sa.column('id', sa.Integer()),
    sa.column('scopes', sa.String()),
    sa.column('namespace_id', sa.Integer()),
)


def upgrade() -> None:
    connection = op.get_bind()
    unnarrowed = sa.select(_tokens.c.id, _tokens.c.scopes).where(_tokens.c.namespace_id.is_(None))
    for token_id, scopes in connection.execute(unnarrowed).all():
        held = scopes.split()
        if _EARLIER <= set(held):
            connection.execute(
                _tokens.update()
                .where(_tokens.c.id == token_id)
                .values(scopes=' '.join([*held, *(s for s in _MANAGING if s not in held)]))
            )


def downgrade() -> None:
    connection = op.get_bind()
    for token_id, scopes in connection.execute(sa.select(_tokens.c.id, _tokens.c.scopes)).all():
        kept = [s for s in scopes.split() if s not in _MANAGING]
        if kept != scopes.split():  # one that held only these is left with no scope at all
            connection.execute(
                _tokens.update().where(_tokens.c.id == token_id).values(scopes=' '.join(kept))
            )
