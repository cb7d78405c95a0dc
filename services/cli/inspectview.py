"""`inspect`'s JSON: docker-inspect's shape for the fields people script against, plus dockyard's own."""

from __future__ import annotations


def networks_view(c) -> dict:
    """docker's NetworkSettings.Networks: the default bridge's address and every user network's."""
    out = {}
    if c.network.ip and c.config.network == "bridge":
        out["bridge"] = {"IPAddress": c.network.ip, "IPPrefixLen": c.network.prefixlen,
                         "Gateway": c.network.gateway, "Aliases": None, "NetworkID": ""}
    for e in c.network.endpoints:
        out[e.network] = {"IPAddress": e.ip, "IPPrefixLen": e.prefixlen, "Gateway": e.gateway,
                          "MacAddress": e.mac, "Aliases": e.aliases, "NetworkID": e.network_id,
                          "Interface": e.interface}
    return out


def inspect_view(c) -> dict:
    """docker-inspect's shape for the fields people script against, plus dockyard's own."""
    from shared.codec import to_builtins
    st = c.state
    return {
        "Id": c.id, "Name": c.name, "Created": c.created, "Host": c.host,
        "Image": c.config.image_digest, "ImageName": c.config.image,
        "State": {"Status": "paused" if st.paused else st.status, "Running": st.status == "running",
                  "Paused": st.paused, "Pid": st.pid,
                  "ExitCode": st.exit_code if st.exit_code is not None else 0, "OOMKilled": st.oom_killed,
                  "Error": st.error, "StartedAt": st.started_at, "FinishedAt": st.finished_at,
                  "RestartCount": st.restart_count},
        "Config": {"Image": c.config.image, "Entrypoint": c.config.entrypoint, "Cmd": c.config.cmd,
                   "Env": c.config.env, "WorkingDir": c.config.working_dir, "User": c.config.user,
                   "Hostname": c.config.hostname, "Labels": c.config.labels},
        "HostConfig": {"Memory": c.config.limits.memory or 0, "MemorySwap": c.config.limits.memory_swap or 0,
                       "CpuShares": c.config.limits.cpu_shares or 0, "NetworkMode": c.config.network,
                       "AutoRemove": c.config.auto_remove,
                       "RestartPolicy": {"Name": c.config.restart.name,
                                         "MaximumRetryCount": c.config.restart.maximum_retry_count},
                       "Binds": [f"{v.name if v.kind == 'volume' else v.source}:{v.destination}"
                                 f"{':ro' if v.readonly else ''}" for v in c.config.volumes],
                       "PortBindings": c.config.publish},
        "NetworkSettings": {"IPAddress": c.network.ip, "IPPrefixLen": c.network.prefixlen,
                            "Gateway": c.network.gateway,
                            "Ports": [to_builtins(p) for p in c.network.ports],
                            "Networks": networks_view(c)},  # networks
        "LogPath": c.log_path,
        # volumes: docker's Mounts
        "Mounts": [{"Type": v.kind, "Name": v.name, "Source": v.source, "Destination": v.destination,
                    "RW": not v.readonly} for v in c.config.volumes],
    }
