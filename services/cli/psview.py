"""What `ps` shows of a container beyond its table: docker's --filter keys, --format fields,
health in the status, and the issue-11 fields of `inspect`."""

from __future__ import annotations

from shared.errors import InvalidArgument

FILTER_KEYS = ("status", "name", "label", "ancestor", "health", "host", "id")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
HEALTHS = ("starting", "healthy", "unhealthy", "none")

PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Status": "STATUS", "Ports": "PORTS", "Names": "NAMES", "Host": "HOST",
              "State": "STATE", "Labels": "LABELS", "Size": "SIZE", "Mounts": "MOUNTS", "Networks": "NETWORKS"}


def parse_filters(specs: list[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` pairs by key: the same key twice means either, different keys both."""
    out: dict[str, list[str]] = {}
    for s in specs:
        key, eq, value = s.partition("=")
        if not eq or key not in FILTER_KEYS:
            raise InvalidArgument(f"invalid filter {s!r}: KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        if key == "status" and value not in STATUSES:
            raise InvalidArgument(f"invalid filter 'status={value}': one of {', '.join(STATUSES)}")
        if key == "health" and value not in HEALTHS:
            raise InvalidArgument(f"invalid filter 'health={value}': one of {', '.join(HEALTHS)}")
        out.setdefault(key, []).append(value)
    return out


def _ancestor(c, ref: str) -> bool:
    image = c.config.image
    digest = c.config.image_digest
    short = ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"
    name = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    return (name == short or name.endswith("/" + short) or digest == ref
            or (ref.startswith("sha256:") and digest.startswith(ref)))


def _label(c, want: str) -> bool:
    key, eq, value = want.partition("=")
    return key in c.config.labels and (not eq or c.config.labels[key] == value)


def matches(c, filters: dict[str, list[str]]) -> bool:
    tests = {
        "status": lambda v: ("paused" if c.state.paused else c.state.status) == v,  # verbs: docker's paused
        "name": lambda v: v in c.name,
        "label": lambda v: _label(c, v),
        "ancestor": lambda v: _ancestor(c, v),
        "health": lambda v: (c.state.health or "none") == v if c.state.status == "running" else v == "none",
        "host": lambda v: c.host == v,
        "id": lambda v: c.id.startswith(v),
    }
    return all(any(tests[k](v) for v in values) for k, values in filters.items())


def needs_all(filters: dict[str, list[str]]) -> bool:
    """A status filter other than running looks at stopped containers too (as docker's does)."""
    return any(v != "running" for v in filters.get("status", []))


def health_suffix(c) -> str:
    """` (healthy)`, ` (unhealthy)`, ` (health: starting)` or nothing, as docker's Status."""
    h = c.state.health
    if c.state.status != "running" or not h:
        return ""
    return " (health: starting)" if h == "starting" else f" ({h})"


def row(c, *, status: str, running_for: str, ports: str, command: str, size: str = "") -> dict[str, str]:
    """The container as docker's --format fields."""
    from datetime import datetime

    from shared.messages.agent import unix_time
    t = unix_time(c.created)
    created_at = datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z") if t else ""
    return {"ID": c.id[:12], "Image": c.config.image, "Command": command, "CreatedAt": created_at,
            "RunningFor": running_for, "Ports": ports, "State": c.state.status, "Status": status,
            "Size": size, "Names": c.name, "Labels": ",".join(f"{k}={v}" for k, v in c.config.labels.items()),
            "Mounts": ",".join(v.destination for v in c.config.volumes), "Networks": c.config.network,
            "Host": c.host}


def inspect_extras(c, view: dict) -> dict:
    """docker's inspect fields for the issue-11 flags, into `view`."""
    f = c.config.flags
    st = c.state
    if f.health is not None:
        view["State"]["Health"] = {"Status": st.health or "starting", "FailingStreak": st.failing_streak,
                                   "Log": [{"Start": p.start, "End": p.end, "ExitCode": p.exit_code,
                                            "Output": p.output} for p in st.health_log]}
        view["Config"]["Healthcheck"] = {"Test": f.health.test, "Interval": int(f.health.interval * 1e9),
                                         "Timeout": int(f.health.timeout * 1e9),
                                         "StartPeriod": int(f.health.start_period * 1e9),
                                         "Retries": f.health.retries}
    view["Config"]["StopSignal"] = f.stop_signal
    if f.stop_timeout is not None:
        view["Config"]["StopTimeout"] = int(f.stop_timeout)
    view["HostConfig"].update({
        "NanoCpus": int(f.cpus * 1e9), "PidsLimit": f.pids_limit or None,
        "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in f.ulimits],
        "PublishAllPorts": f.publish_all, "ReadonlyRootfs": f.read_only,
        "Tmpfs": {t.path: ",".join(t.options) for t in f.tmpfs}, "Init": f.init,
        "ExtraHosts": [f"{h.name}:{h.ip}" for h in f.add_hosts], "Dns": list(f.dns),
        "CapAdd": list(f.cap_add), "CapDrop": list(f.cap_drop), "Privileged": f.privileged,
        "SecurityOpt": (["no-new-privileges"] if f.no_new_privileges else [])
        + (["seccomp=unconfined"] if f.seccomp_profile == "unconfined"
           else ["seccomp=<profile>"] if f.seccomp_profile else []),
    })
    return view


def port(p) -> str:
    """A published port as docker's PORTS column writes it."""
    return f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}"


def status(c, now: float) -> str:
    """docker's STATUS: `Up 3 minutes`, `Up 2 hours (Paused)`, `Exited (0) 5 seconds ago`."""
    from services.cli.humanize import duration
    from shared.messages.agent import unix_time
    st = c.state
    if st.status == "running":
        t = unix_time(st.started_at)
        up = f"Up {duration(now - t)}" if t else "Up"
        return f"{up} (Paused)" if st.paused else up  # verbs: docker's paused status
    if st.status == "exited":
        t = unix_time(st.finished_at)
        return f"Exited ({st.exit_code}) {duration(now - t)} ago" if t else f"Exited ({st.exit_code})"
    return st.status.capitalize()
