"""Build checks (`--check` and warnings on a build) and stages built in parallel, on a real builder."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_build import base, make_context  # noqa: F401 (base: a fixture)


pytestmark = [pytest.mark.e2e, pytest.mark.root]

LINTED = """\
from busybox:latest As Build
MAINTAINER someone
ARG GITHUB_TOKEN
ENV APP_DIR=/app
COPY secret.txt $APP_DIRR/
CMD echo hi
FROM busybox:latest
COPY --from=build /etc/passwd /p
"""





EXPECTED = [
    ("StageNameCasing", "Stage name 'Build' should be lowercase", 1),
    ("FromAsCasing", "'As' and 'from' keywords' casing do not match", 1),
    ("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 2),
    ("SecretsUsedInArgOrEnv", 'Do not use ARG or ENV instructions for sensitive data (ARG "GITHUB_TOKEN")', 3),
    ("UndefinedVar", "Usage of undefined variable '$APP_DIRR' (did you mean $APP_DIR?)", 5),
    ("CopyIgnoredFile", 'Attempting to Copy file "secret.txt" that is excluded by .dockerignore', 5),
    ("JSONArgsRecommended", "JSON arguments recommended for CMD to prevent unintended behavior related to OS "
     "signals", 6),
]


def test_check_reports_buildkit_rules_and_builds_nothing(stack, base, tmp_path):
    ctx = make_context(tmp_path, LINTED, {".dockerignore": "secret.txt\n", "secret.txt": "s"})
    p = stack.cli("build", "--check", "--json", "-t", "dybc-lint:1", str(ctx), check=False)
    assert p.returncode == 1
    found = [(w["rule"], w["message"], w["line"]) for w in json.loads(p.stdout)["warnings"]]
    assert sorted(found) == sorted(EXPECTED)
    human = stack.cli("build", "--check", str(ctx), check=False)
    assert human.returncode == 1 and "Check complete, 7 warnings have been found!" in human.stdout
    assert ("WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n"
            "Stage name 'Build' should be lowercase\nDockerfile:1") in human.stdout
    assert stack.cli("images", check=False).stdout.count("dybc-lint") == 0  # nothing was built

    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCMD [\"true\"]\n")
    clean = stack.cli("build", "--check", str(ctx))
    assert "no warnings found" in clean.stdout


def test_a_build_warns_with_the_same_checks(stack, base, tmp_path):
    ctx = make_context(tmp_path, LINTED, {".dockerignore": "other\n", "secret.txt": "s"})
    out = json.loads(stack.cli("build", "--json", "-t", "dybc-lint:2", str(ctx)).stdout)
    rules = {w["rule"] for w in out["warnings"] if w["kind"] == "lint"}
    assert rules == {r for r, _, _ in EXPECTED} - {"CopyIgnoredFile"}
    p = stack.cli("build", "-t", "dybc-lint:2", str(ctx))
    assert "WARNING: StageNameCasing: Stage name 'Build' should be lowercase (line 1)" in p.stderr


def test_independent_stages_run_in_parallel_and_unused_ones_are_skipped(stack, base, tmp_path):
    """Stages a and b meet in a shared cache dir: each waits for the other, so they must run at once."""
    rv = f"dybc-rv-{uuid.uuid4().hex[:8]}"
    meet = ("RUN --mount=type=cache,id={rv},target=/rv touch /rv/{me} && i=0 && "
            "while [ ! -e /rv/{other} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done && "
            "test -e /rv/{other} && echo {me} > /{me}\n")
    ctx = make_context(tmp_path, "FROM busybox:latest AS a\n" + meet.format(rv=rv, me="a", other="b") +
               "FROM busybox:latest AS b\n" + meet.format(rv=rv, me="b", other="a") +
               "FROM busybox:latest AS unused\nRUN exit 1\n"
               "FROM busybox:latest\nCOPY --from=a /a /\nCOPY --from=b /b /\nRUN cat /a /b > /all\n", {})
    out = json.loads(stack.cli("build", "--json", "-t", "dybc-par:1", str(ctx)).stdout)
    ran = [s["instruction"] for s in out["steps"] if not s["cached"]]
    assert not any("exit 1" in s for s in ran)  # the unused stage is skipped
    assert [s["stage"] for s in out["steps"]] == sorted(s["stage"] for s in out["steps"])  # reported in order
    assert any("cat /a /b" in s for s in ran)
