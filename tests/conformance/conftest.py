"""The two registries every workflow runs against, and the deviations each is known for.

`dockyard`: `dockyard up` in its default configuration (direct uploads and blob
redirects on `auto`), admin through the token flow. `distribution`: CNCF
distribution 2.8.2 (Debian's docker-registry), no auth. The same tests run against
both, so they test the spec rather than one registry's habits. One stack per target
for the whole package.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.conformance.client import ABSOLUTE, PATH, Client
from tests.e2e.conftest import start_stack, stop_stack

DOCKYARD, DISTRIBUTION = "dockyard", "distribution"


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    creds: tuple[str, str] | None
    automatic_crossmount: bool  # the suite's OCI_AUTOMATIC_CROSSMOUNT

    def client(self, http: aiohttp.ClientSession, mode: str = ABSOLUTE) -> Client:
        return Client(http, self.url, self.creds, mode)


# ---- known deviations: (target, client mode or None for both, test name) -> reason --------------

NO_REFERRERS = "distribution 2.8 has no referrers API (404) and ignores `subject`: no OCI-Subject header"
DEVIATIONS: dict[tuple[str, str | None, str], str] = {
    (DISTRIBUTION, None, "test_416_body_is_the_spec_error_list"):
        "distribution 2.8 ignores a PATCH's Content-Range: no 416 at all",
    **{(DISTRIBUTION, None, name): NO_REFERRERS for name in (
        "test_manifest_with_subject_answers_oci_subject", "test_referrers_of_unknown_digest_is_empty",
        "test_referrers_list", "test_referrers_filtered_by_artifact_type",
        "test_referrers_of_a_subject_never_pushed", "test_referrers_bad_digest_is_400",
        "test_referrers_drop_a_deleted_manifest")},
    **{(DISTRIBUTION, None, name): "distribution 2.8 takes a malformed digest for a tag and answers 500 UNKNOWN"
       for name in ("test_put_under_invalid_digest_is_400", "test_bad_digest_reference_is_400_or_404")},
    (DISTRIBUTION, None, "test_tags_list"): "distribution 2.8 lists tags in directory order, not lexical order",
    **{(DISTRIBUTION, None, name): "distribution 2.8 ignores `n` on tags/list (every tag comes back)"
       for name in ("test_tags_n_and_last", "test_tags_n_zero_is_empty_without_link")},
    (DISTRIBUTION, None, "test_delete_tag"):
        "distribution 2.8 refuses a tag delete with 400 DIGEST_INVALID (the spec: 202, or 400 UNSUPPORTED, or 405)",
    (DISTRIBUTION, None, "test_out_of_order_chunk_is_416"):
        "distribution 2.8 ignores a PATCH's Content-Range: an out-of-order chunk is appended (202, not 416)",
    (DISTRIBUTION, None, "test_chunk_retried_at_the_first_location"):
        "distribution 2.8 answers 404 at an upload's first Location once a chunk has landed (its _state is stale)",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        if params is None or "target" not in params.params:
            continue
        target, mode = params.params["target"], params.params.get("mode")
        reason = (DEVIATIONS.get((target, mode, item.originalname))
                  or DEVIATIONS.get((target, None, item.originalname)))
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


# ---- the targets --------------------------------------------------------------------------------

def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, asking for credentials
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)


def _start_distribution(root: Path) -> tuple[subprocess.Popen, str]:
    cfg, log = root / "config.yml", root / "registry.log"
    cfg.write_text(f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
                   f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
                   f"http:\n  addr: 127.0.0.1:0\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    deadline = time.monotonic() + 30
    while not (m := re.search(r"listening on (127\.0\.0\.1:\d+)", log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("docker-registry did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.05)
    url = f"http://{m.group(1)}"
    _wait_http(url + "/v2/", proc, log)
    return proc, url


@pytest.fixture(scope="package", params=[DOCKYARD, DISTRIBUTION])
def target(request, tmp_path_factory) -> Target:
    if request.param == DOCKYARD:
        with pytest.MonkeyPatch.context() as env:
            # The default configuration, whatever the caller's environment sets.
            for name in ("DOCKYARD_REGISTRY_DIRECT_UPLOAD", "DOCKYARD_REGISTRY_BLOB_REDIRECT", "DOCKYARD_AUTH_REALM"):
                env.delenv(name, raising=False)
            stack = start_stack(tmp_path_factory.mktemp("dyconf-stack"))
        try:
            _wait_http(stack.registry_url + "/v2/", stack.proc, stack.data_dir / "up.log")
            yield Target(DOCKYARD, stack.registry_url, ("admin", stack.admin_password), automatic_crossmount=True)
        finally:
            assert stop_stack(stack) == 0, (stack.data_dir / "up.log").read_text(errors="replace")
        return
    proc, url = _start_distribution(tmp_path_factory.mktemp("dyconf-distribution"))
    try:
        yield Target(DISTRIBUTION, url, None, automatic_crossmount=False)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture(scope="module")
def seeder(target, http) -> Client:
    """The client that pushes a workflow's set-up content (following Location absolutely)."""
    return target.client(http)


@pytest.fixture(params=[ABSOLUTE, PATH])
def mode(request) -> str:
    return request.param
