"""Persistence and bytes: the database, blob storage, the secret box, migrations and
where job output lives.

Knows tables and files, not rules: nothing here decides who may see what. Imports
`kiln.core` and `models` only.
"""
