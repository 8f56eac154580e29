"""Loops beside the API: the build queue and workers, the cron scheduler, webhook
deliveries; in `kiln serve` or in processes of their own.

Imports `kiln.domain`, `kiln.store`, `kiln.core` and `kiln.drivers`; never
`kiln.http`.
"""
