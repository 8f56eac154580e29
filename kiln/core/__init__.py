"""Shared words: settings, the contract, problems, the caller, HAL body parts.

Imports nothing else of Kiln; every other layer may import it.
"""
