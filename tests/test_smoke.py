import httpx

from tests.support import Account


def test_user(client: httpx.Client, alice: Account) -> None:
    r = client.get("/api/v1/user", headers=alice.auth)
    assert r.status_code == 200, r.text
    assert r.json()["username"] == alice.username
