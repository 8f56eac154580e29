"""Kiln's tables. Importing this package registers every table on `SQLModel.metadata`."""

from models.idempotency import IdempotencyRecord
from models.namespace import MAX_DEPTH, Collaborator, Namespace, NamespaceAncestor, Visibility
from models.token import Token
from models.user import User

__all__ = [
    "MAX_DEPTH",
    "Collaborator",
    "IdempotencyRecord",
    "Namespace",
    "NamespaceAncestor",
    "Token",
    "User",
    "Visibility",
]
