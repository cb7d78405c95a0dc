"""The run/create flag parsers and `--format`/`--filter` of issue 11 (pure functions, real values)."""

from __future__ import annotations

import argparse

import pytest

from services.cli import formatting, psview, runopts
from shared.errors import InvalidArgument
from shared.messages.agent import Container, ContainerConfig, ContainerState, RunRequest


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    runopts.add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_become_typed_values(tmp_path, monkeypatch):
    env = tmp_path / "env"
    env.write_text("# a comment\nA=1\n\n  B=two words\nFROM_HOST\nMISSING\n")
    monkeypatch.setenv("FROM_HOST", "h")
    prof = tmp_path / "sec.json"
    prof.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    req = runopts.apply(RunRequest(image="busybox", env=["A=override"]), _args(
        "--cpus", "1.5", "--pids-limit", "-5", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=64",
        "-P", "--env-file", str(env), "--read-only", "--tmpfs", "/run:size=1m,mode=1777", "--init",
        "--add-host", "db:10.0.0.2", "--add-host", "v6=fd00::1", "--dns", "9.9.9.9", "--cap-add", "NET_ADMIN",
        "--cap-drop", "chown", "--security-opt", "no-new-privileges:true", "--security-opt", f"seccomp={prof}",
        "--stop-signal", "USR1", "--stop-timeout", "3", "--health-cmd", "true", "--health-interval", "1m30s",
        "--health-timeout", "500ms", "--health-retries", "2"))
    f = req.flags
    assert req.env == ["A=1", "B=two words", "FROM_HOST=h", "A=override"]
    assert (f.cpus, f.pids_limit, f.publish_all, f.read_only, f.init) == (1.5, -1, True, True, True)
    assert [(u.name, u.soft, u.hard) for u in f.ulimits] == [("nofile", 1024, 2048), ("nproc", 64, 64)]
    assert [(t.path, t.options) for t in f.tmpfs] == [("/run", ["size=1m", "mode=1777"])]
    assert [(h.name, h.ip) for h in f.add_hosts] == [("db", "10.0.0.2"), ("v6", "fd00::1")]
    assert (f.dns, f.cap_add, f.cap_drop) == (["9.9.9.9"], ["NET_ADMIN"], ["chown"])
    assert f.no_new_privileges and f.seccomp_profile == '{"defaultAction": "SCMP_ACT_ALLOW"}'
    assert (f.stop_signal, f.stop_timeout) == ("USR1", 3.0)
    assert f.health.test == ["CMD-SHELL", "true"]
    assert (f.health.interval, f.health.timeout, f.health.retries) == (90.0, 0.5, 2)


@pytest.mark.parametrize("argv, message", [
    (["--ulimit", "nofile=10:5"], "soft limit"), (["--ulimit", "bogus=1"], "NAME=SOFT"),
    (["--add-host", "db:nope"], "NAME:IP"), (["--security-opt", "apparmor=x"], "unsupported"),
    (["--health-interval", "3 parsecs"], "duration"), (["--no-healthcheck", "--health-cmd", "x"], "conflicts"),
    (["--cpus", "-1"], "positive"), (["--env-file", "/nonexistent/env"], "env-file"),
])
def test_bad_flags_are_refused_naming_the_problem(argv, message):
    with pytest.raises(InvalidArgument, match=message):
        runopts.apply(RunRequest(image="busybox"), _args(*argv))


def test_no_healthcheck_disables_the_image_check():
    assert runopts.apply(RunRequest(image="b"), _args("--no-healthcheck")).flags.health.test == ["NONE"]
    assert runopts.apply(RunRequest(image="b"), _args()).flags.health is None


def _container(name: str, status: str = "running", health: str = "", labels: dict | None = None,
               image: str = "busybox", host: str = "a1") -> Container:
    return Container(id=name * 8, name=name, host=host, created="2026-01-01T00:00:00Z",
                     config=ContainerConfig(image=image, image_digest="sha256:abcd", labels=labels or {}),
                     state=ContainerState(status=status, health=health))


def test_filters_combine_like_dockers():
    cs = [_container("web", health="healthy", labels={"tier": "front"}), _container("db", "exited"),
          _container("job", health="unhealthy", image="127.0.0.1:5000/library/busybox:1", host="a2")]
    pick = lambda *specs: [c.name for c in cs if psview.matches(c, psview.parse_filters(list(specs)))]  # noqa: E731
    assert pick("status=exited") == ["db"]
    assert pick("status=exited", "status=running") == ["web", "db", "job"]
    assert pick("label=tier") == pick("label=tier=front") == ["web"]
    assert pick("label=tier=back") == []
    assert pick("health=unhealthy") == ["job"] and pick("health=none") == ["db"]
    assert pick("ancestor=busybox") == ["web", "db"] and pick("ancestor=busybox:1") == ["job"]
    assert pick("host=a2", "name=o") == ["job"]
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        psview.parse_filters(["colour=red"])
    assert psview.health_suffix(cs[0]) == " (healthy)"
    assert psview.health_suffix(_container("x", health="starting")) == " (health: starting)"


def test_format_templates_table_and_json():
    rows = [{"ID": "abc", "Names": "web", "Status": "Up"}, {"ID": "defghi", "Names": "db", "Status": "Exited"}]
    headers = {"ID": "CONTAINER ID", "Names": "NAMES", "Status": "STATUS"}
    labels = [{"tier": "front"}, {}]
    assert formatting.render("{{.ID}}\\t{{.Names}}", rows, headers) == ["abc\tweb", "defghi\tdb"]
    assert formatting.render("table {{.ID}}\\t{{.Names}}", rows, headers) == [
        "CONTAINER ID   NAMES", "abc            web", "defghi         db"]
    assert formatting.render('{{.Names}}={{.Label "tier"}} {{lower .Status}}', rows, headers, labels) == [
        "web=front up", "db= exited"]
    assert formatting.render("json", rows[:1], headers) == ['{"ID": "abc", "Names": "web", "Status": "Up"}']
    assert formatting.render("{{json .Names}}", rows[:1], headers) == ['"web"']
    with pytest.raises(InvalidArgument, match="can't evaluate field Nope"):
        formatting.render("{{.Nope}}", rows, headers)
    with pytest.raises(InvalidArgument, match="unsupported action"):
        formatting.render("{{range .}}", rows, headers)
