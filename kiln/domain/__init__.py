"""The rules, with no request in sight: who may see and change what, accounts and
credentials, namespaces, owned resources, builds and their manifests, schedules, SSH
keys, webhook targets and events, masking, and the views of builds.

Takes the caller as a `Principal` argument and never reads a request. Imports
`kiln.store` and `kiln.core` only.
"""
