"""Who may read /metrics: loopback peers, or the bearer of DOCKYARD_METRICS_TOKEN."""

from shared.metrics import access, exposition


def test_loopback_peers():
    for remote in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert access.is_loopback(remote), remote
    for remote in ("10.0.0.1", "192.0.2.2", "::ffff:10.0.0.1", "fe80::1%eth0", "", None, "localhost", "unix"):
        assert not access.is_loopback(remote), remote


def test_bearer_token():
    assert access.bearer_ok("Bearer s3cret", "s3cret")
    assert access.bearer_ok("bearer s3cret ", "s3cret")
    for header in ("Bearer s3cre", "Basic s3cret", "s3cret", "Bearer", "", None):
        assert not access.bearer_ok(header, "s3cret"), header
    assert not access.bearer_ok("Bearer ", "")  # no token configured: nothing opens it


def test_listen_addr_off_values():
    for off in (None, "", " off ", "OFF", "0", "no"):
        assert exposition.listen_addr(off) == ""
    assert exposition.listen_addr("127.0.0.1:0") == "127.0.0.1:0"
