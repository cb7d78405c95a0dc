"""The agent's verbs without a container: ps output parsing, commit's --change, kept events."""

from __future__ import annotations

import pytest

from services.runtime_agent.verbs.commit import apply_changes
from services.runtime_agent.verbs.events import EventLog
from services.runtime_agent.verbs.inspect import parse_ps
from shared.errors import InvalidArgument
from shared.messages.agent import Container, ContainerConfig

PS = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 15:00 ?        00:00:01 /sbin/init
root         412       1  0 15:01 ?        00:00:00 sh -c sleep 600 & sleep 700; echo
root         413     412  0 15:01 ?        00:00:00 sleep 600
"""


def test_parse_ps_keeps_the_cgroups_rows_and_whole_commands():
    r = parse_ps(PS, {412, 413})
    assert r.titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [p[1] for p in r.processes] == ["412", "413"]
    assert r.processes[0][-1] == "sh -c sleep 600 & sleep 700; echo"
    with pytest.raises(InvalidArgument, match="PID field"):
        parse_ps("COMMAND\nsleep\n", {1})


def test_commit_changes():
    cfg = apply_changes({"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"]},
                        ['CMD ["cat", "/x"]', "ENTRYPOINT /bin/run me", "ENV A=2 B=3", "LABEL tier=web",
                         "EXPOSE 80 53/udp", "USER nobody", "WORKDIR /srv", "VOLUME /data", "STOPSIGNAL SIGINT"])
    assert cfg["Cmd"] == ["cat", "/x"] and cfg["Entrypoint"] == ["/bin/sh", "-c", "/bin/run me"]
    assert cfg["Env"] == ["PATH=/bin", "A=2", "B=3"] and cfg["Labels"] == {"tier": "web"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}} and cfg["Volumes"] == {"/data": {}}
    assert (cfg["User"], cfg["WorkingDir"], cfg["StopSignal"]) == ("nobody", "/srv", "SIGINT")
    with pytest.raises(InvalidArgument, match="RUN is not one of"):
        apply_changes({}, ["RUN rm -rf /"])
    with pytest.raises(InvalidArgument):
        apply_changes({}, ["CMD [not json"])


def test_events_are_kept_across_a_restart(tmp_path):
    c = Container(id="d" * 64, name="w", host="h", created="", config=ContainerConfig(image="busybox"))
    log = EventLog(None, "h", tmp_path / "events.jsonl")
    first = log.record("create", c, {})
    log.record("die", c, {"exitCode": "0"})
    again = EventLog(None, "h", tmp_path / "events.jsonl")
    assert [e.action for e in again.between(0, 0)] == ["create", "die"]
    assert again.between(0, first.time_nano / 1e9 + 1e-6)[0].action == "create"
    assert again.between(float("nan"), 1e300) == again.between(0, 0)  # nonsense bounds: unbounded


def test_each_verb_has_the_narrowest_role():
    from shared import subjects
    from shared.messages import verbs as v
    from shared.permissions import required_role
    for verb in (v.VERB_WAIT, v.VERB_TOP, v.VERB_STATS, v.VERB_DIFF):
        assert required_role(subjects.agent("h", verb)) == "reader"
    assert required_role("dockyard.agent.all.events") == "reader"
    assert required_role("dockyard.agent.all.stats") == "reader"  # stats of the fleet in one gather
    for verb in (v.VERB_PAUSE, v.VERB_UPDATE, v.VERB_CP_TO, v.VERB_CP_FROM, v.VERB_EXPORT, v.VERB_RESTART):
        assert required_role(subjects.agent("h", verb)) == "operator"
    assert required_role(subjects.agent("h", v.VERB_COMMIT)) == "admin"


def test_stream_chunks_cross_the_bus_as_raw_payloads_with_headers():
    from shared.messages.verbs import Chunk, chunk_headers, chunk_of
    data = bytes(range(256)) * 4
    c = chunk_of(data, chunk_headers(Chunk(seq=7, data=data)))
    assert (c.seq, c.data, c.end, c.error) == (7, data, False, "")
    last = chunk_headers(Chunk(seq=8, end=True, error="disk full\r\nInjected: header"))
    assert last["Dockyard-Error"] == "disk full Injected: header"  # one line, whatever it said
    c = chunk_of(b"", last)
    assert (c.seq, c.end, c.error) == (8, True, "disk full Injected: header")
    for bad in (None, {}, {"Dockyard-Seq": "-1"}, {"Dockyard-Seq": "x"}):
        with pytest.raises(InvalidArgument, match="Dockyard-Seq"):
            chunk_of(b"x", bad)
    # an older peer's JSON Chunk (base64 bytes) reads the same; a raw chunk may start with "{"
    from shared import codec
    assert chunk_of(codec.encode(Chunk(seq=2, data=b"{x}", end=True)), None) == Chunk(seq=2, data=b"{x}", end=True)
    assert chunk_of(b"{x}", {"Dockyard-Seq": "2"}).data == b"{x}"
    with pytest.raises(InvalidArgument):
        chunk_of(b"{not json", None)
