"""Kiln's conventions around connexion: transport, authentication, rate limits,
negotiation, validation, problems, HAL responses, ETags, pagination, idempotency,
units of work, uploads and downloads.

The only layer that sees a request. Imports `kiln.domain`, `kiln.store` and
`kiln.core`; never the background loops or the drivers.
"""
