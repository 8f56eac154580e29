"""Kiln's tables. Importing this package registers every table on `SQLModel.metadata`."""

from models.blob import Blob, Image, StoredObject
from models.build import (
    Artifact,
    Build,
    BuildCounter,
    BuildKey,
    BuildObject,
    BuildTag,
    BuildVariable,
    Job,
)
from models.cron_job import CronJob
from models.idempotency import IdempotencyRecord
from models.invite import Invite
from models.namespace import MAX_DEPTH, Collaborator, Namespace, NamespaceAncestor, Visibility
from models.owned import Owned, owner_key
from models.ssh_key import SshKey
from models.token import Token
from models.user import User
from models.variable import Variable
from models.webhook import DeliveryAttempt, Webhook, WebhookDelivery

__all__ = [
    "MAX_DEPTH",
    "Artifact",
    "Blob",
    "Build",
    "BuildCounter",
    "BuildKey",
    "BuildObject",
    "BuildTag",
    "BuildVariable",
    "Collaborator",
    "CronJob",
    "DeliveryAttempt",
    "IdempotencyRecord",
    "Image",
    "Invite",
    "Job",
    "Namespace",
    "NamespaceAncestor",
    "Owned",
    "SshKey",
    "StoredObject",
    "Token",
    "User",
    "Variable",
    "Visibility",
    "Webhook",
    "WebhookDelivery",
    "owner_key",
]
