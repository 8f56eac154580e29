"""Shared words: settings, the contract, problems, the caller, HAL body parts, and the
user cache of what can be rebuilt (the parsed contract, bytecode).

Imports nothing else of Kiln; every other layer may import it.
"""
