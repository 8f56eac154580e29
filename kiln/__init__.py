"""Kiln: a CI service whose HTTP API is the product."""

import warnings

# connexion imports Starlette's test client at import time, which warns about httpx.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
