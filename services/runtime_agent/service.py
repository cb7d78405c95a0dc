"""`dockyard serve runtime-agent`: one host's containers and images, driven over the bus.

Per-host verbs are `dockyard.agent.<id>.<verb>`; the fleet-wide listings
(`dockyard.agent.all.ps|images`) are subscribed with a queue group of this agent's
own, so a scatter-gather hears every agent. Cancelling `serve` stops answering and
heartbeating but leaves every container running: a restarted agent finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from ipaddress import IPv4Network
from pathlib import Path

from services.runtime_agent.containers.config import parse_volume_roots
from services.runtime_agent.containers.logs import LogReader, Streamer, follow, tail
from services.runtime_agent.containers.manager import Containers
from services.runtime_agent.containers.mirror import ContainerMirror
from services.runtime_agent.containers.store import ContainerStore
from services.runtime_agent.heartbeat import Heartbeats, capacity, cpus, open_bucket
from services.runtime_agent.images import ImageStore, Puller
from services.runtime_agent.interactive import Interactive
from services.runtime_agent.network import Network, NetworkConfig
from services.runtime_agent.prune import prune
from services.runtime_agent.volumes.store import VolumeStore
from services.runtime_agent.volumes.verbs import VolumeVerbs
from shared import bus, subjects
from shared.config import Config
from shared.errors import InvalidArgument
from shared.layers import SnapshotStore
from shared.messages import agent as m
from shared.messages.diskusage import VERB_DF, DfReply, DfRequest
from shared.messages.gc import PruneReply, PruneRequest
from shared.registry import bus_token_provider
from shared.runtime import Runtime

log = logging.getLogger("dockyard.agent")


def check_agent_id(agent_id: str) -> str:
    if (not agent_id or agent_id in m.RESERVED_AGENT_IDS
            or any(c in agent_id for c in ".*> \t/") or len(agent_id) > 64):
        raise InvalidArgument(f"invalid agent id {agent_id!r}: a single subject token, not 'all' or 'any'")
    return agent_id


def network_config(cfg: Config, state_dir: Path) -> NetworkConfig:
    """The agent's bridge; DOCKYARD_BRIDGE/_SUBNET/_NET_PREFIX keep two agents on one host apart."""
    return NetworkConfig(state_dir=state_dir, bridge=cfg.env("BRIDGE", "dockyard0"),
                         subnet=IPv4Network(cfg.env("SUBNET", "10.88.0.0/16")),
                         prefix=cfg.env("NET_PREFIX", "dockyard"))


class Agent:
    """The verbs, over the parts that do the work."""

    def __init__(self, cfg: Config, nc, agent_id: str, root: Path, runtime: Runtime, network: Network):
        self.cfg = cfg
        self.nc = nc
        self.id = agent_id
        self.images = ImageStore(root / "images")
        snapshots = SnapshotStore(root / "snapshots")
        self.puller = Puller(self.images, snapshots, root / "downloads", stack_registry=cfg.registry_addr,
                             stack_url=cfg.registry_base_url, ca_file=cfg.fleet_ca,
                             token_provider=bus_token_provider(bus.BusClient(nc), f"runtime-agent-{agent_id}"))
        self.network = network
        self.runtime = runtime
        roots = parse_volume_roots(cfg.env("AGENT_VOLUME_ROOTS"))
        self.volumes = VolumeStore(root / "volumes", agent_id, roots)  # volumes: named volumes
        self.containers = Containers(agent_id=agent_id, store=ContainerStore(root / "containers"),
                                     runtime=runtime, images=self.images, puller=self.puller, network=network,
                                     nc=nc, cgroup_parent=cfg.env("CGROUP_PARENT", "/dockyard"),
                                     volume_roots=roots, volumes=self.volumes)
        self.volume_verbs = VolumeVerbs(self.volumes, self.containers)
        self.interactive = Interactive(nc, agent_id, self.containers, runtime)  # attach, exec, -i/-t
        self.containers.stdio = self.interactive
        mem = cfg.env("AGENT_MEMORY", "")
        self.memory_override = int(mem) if mem else None
        self.address = cfg.env("AGENT_ADDRESS", "") or _default_address()
        self.started_at = time.time()

    def register(self, svc: bus.BusService) -> None:
        own = f"{subjects.queue(subjects.RUNTIME_AGENT)}.{self.id}"
        run_bound = 256 << 10  # argv and environment: docker allows more than a default request
        verbs = [
            (m.VERB_RUN, m.RunRequest, self.run, {"max_bytes": run_bound}),
            (subjects.AGENT_RUN_HOST_BIND, m.RunRequest, self.run_host_bind, {"max_bytes": run_bound}),
            (subjects.AGENT_RUN_PRIVILEGED, m.RunRequest, self.run_privileged, {"max_bytes": run_bound}),
            (m.VERB_START, m.StartRequest, self.start, {}), (m.VERB_STOP, m.StopRequest, self.stop, {}),
            (m.VERB_KILL, m.KillRequest, self.kill, {}), (m.VERB_RM, m.RmRequest, self.rm, {}),
            (m.VERB_INSPECT, m.ContainerRef, self.inspect, {}), (m.VERB_LOGS, m.LogsRequest, self.logs, {}),
            (m.VERB_PS, m.PsRequest, self.ps, {"empty_ok": True}),
            (m.VERB_IMAGES, m.ImagesRequest, self.list_images, {}), (m.VERB_PULL, m.PullRequest, self.pull, {}),
            (m.VERB_PRUNE, PruneRequest, self.prune, {}),
        ]
        for verb, typ, handler, bounds in verbs:
            svc.endpoint(subjects.agent(self.id, verb), typ, handler, queue=own, **bounds)
        self.interactive.register(svc)
        svc.endpoint(m.fleet(m.VERB_PS), m.PsRequest, self.ps, queue=own, empty_ok=True)
        svc.endpoint(m.fleet(m.VERB_IMAGES), m.ImagesRequest, self.list_images, queue=own)
        from services.runtime_agent.verbs import Verbs  # verbs: wait, restart, top, stats, cp, ... (issue 11)
        self.verbs = Verbs(self, self.containers.store.root.parent)
        self.verbs.register(svc, own)
        self.volume_verbs.register(svc, self.id, own)  # volumes
        for subject in (subjects.agent(self.id, VERB_DF), m.fleet(VERB_DF)):  # volumes: system df
            svc.endpoint(subject, DfRequest, self.df, queue=own, empty_ok=True)

    def heartbeat(self) -> m.Heartbeat:
        all_ = self.containers.list(all=True)
        total, free = capacity(self.memory_override, self.containers.reserved_memory())
        return m.Heartbeat(agent_id=self.id, address=self.address,
                           runtime=f"{self.runtime.info.name} {self.runtime.info.version}", cpus=cpus(),
                           memory_total=total, memory_free=free, containers=len(all_),
                           running=sum(c.state.status == "running" for c in all_), images=len(self.images.list()),
                           time=time.time(), started_at=self.started_at)

    # ---- verbs -----------------------------------------------------------------------

    async def run(self, req: m.RunRequest) -> m.RunReply:
        return m.RunReply(container=await self.containers.run(req))

    async def run_host_bind(self, req: m.RunRequest) -> m.RunReply:
        """`run` that may bind any host path: its subject is the admin role's alone."""
        return m.RunReply(container=await self.containers.run(req, any_host_path=True))

    async def run_privileged(self, req: m.RunRequest) -> m.RunReply:
        """`run --privileged` (and any host path): its subject is the admin role's alone."""
        return m.RunReply(container=await self.containers.run(req, any_host_path=True, privileged=True))

    async def start(self, req: m.StartRequest) -> m.ContainerReply:
        if req.attach is not None:  # cli11: start -a/-i
            c = self.containers.inspect(req.container)
            if not c.config.stdio.interactive:  # its stdio is the shim's: the output, from its log
                return m.ContainerReply(container=await self.interactive.start_following(
                    c, req.attach, lambda: self.containers.start(c.id)))
        return m.ContainerReply(container=await self.containers.start(req.container, attach=req.attach))

    async def stop(self, req: m.StopRequest) -> m.ContainerReply:
        return m.ContainerReply(container=await self.containers.stop(req.container,
                                                                    req.timeout if req.timeout_given else None))

    async def kill(self, req: m.KillRequest) -> m.ContainerReply:
        return m.ContainerReply(container=await self.containers.kill(req.container, req.signal))

    async def rm(self, req: m.RmRequest) -> m.RmReply:
        return m.RmReply(id=await self.containers.remove(req.container, req.force, volumes=req.volumes))

    async def inspect(self, req: m.ContainerRef) -> m.ContainerReply:
        return m.ContainerReply(container=self.containers.inspect(req.container))

    async def ps(self, req: m.PsRequest) -> m.PsReply:
        found = self.containers.list(req.all, req.match)
        sizes = {}
        if req.size:  # runflags: `ps -s`, off the loop (it walks each container's upper)
            from services.runtime_agent.containers.sizes import writable_size
            sizes = await asyncio.to_thread(lambda: {c.id: writable_size(self.puller.snapshots, c.id) for c in found})
        return m.PsReply(host=self.id, containers=found, sizes=sizes)

    async def list_images(self, req: m.ImagesRequest) -> m.ImagesReply:
        return m.ImagesReply(host=self.id, images=self.images.list())

    async def pull(self, req: m.PullRequest) -> m.PullReply:
        streamer = Streamer(self.nc, req.stream_inbox)
        return m.PullReply(image=await self.puller.pull(req.image, streamer.progress))

    async def prune(self, req: PruneRequest) -> PruneReply:
        return await prune(req, self.containers, self.images, self.puller)

    async def df(self, req: DfRequest) -> DfReply:
        from services.runtime_agent.diskusage import measure
        return await asyncio.to_thread(measure, req, self.id, self.containers, self.images, self.puller.snapshots,
                                       self.volumes)

    async def logs(self, req: m.LogsRequest) -> m.LogsReply:
        c = self.containers.inspect(req.container)
        if not req.stream_inbox:
            raise InvalidArgument("logs need a stream_inbox to send the lines to")
        streamer = Streamer(self.nc, req.stream_inbox)
        running = c.state.status == "running"
        exited = self.containers.exited_event(c.id) if req.follow and running else None
        self.containers.spawn(self._send_logs(c.log_path, req, streamer, exited))
        return m.LogsReply(id=c.id, running=running)

    async def _send_logs(self, path: str, req: m.LogsRequest, streamer: Streamer,
                         exited: asyncio.Event | None) -> None:
        reader = LogReader(Path(path))
        try:
            await streamer.send(tail(reader.read(), req.tail))
            if exited is not None:
                await follow(reader, streamer, exited)
        except Exception as e:  # noqa: BLE001 - the requester hears why its stream ended
            await streamer.end(error=str(e))
            raise
        finally:
            reader.close()
        await streamer.end()


def _default_address() -> str:
    import socket
    return socket.gethostname()


async def serve(cfg: Config) -> None:
    agent_id = check_agent_id(cfg.host_id)
    root = cfg.service_dir(subjects.RUNTIME_AGENT) / agent_id
    root.mkdir(parents=True, exist_ok=True)
    runtime = await Runtime.probe(root / "runtime")
    runtime.warm()
    log.info("agent %s: runtime %s %s", agent_id, runtime.info.name, runtime.info.version)
    nc = await bus.connect(cfg.nats_url, name=f"{subjects.RUNTIME_AGENT}-{agent_id}")
    network = Network(network_config(cfg, root / "network"))
    from services.runtime_agent.netverbs import NetworkVerbs, user_networks  # networks
    usernets = user_networks(cfg, network, agent_id, root / "network", nc)
    agent: Agent | None = None
    svc: bus.BusService | None = None
    beats: Heartbeats | None = None
    mirror: ContainerMirror | None = None
    try:
        await network.start()
        await usernets.start()  # networks: after the default bridge, whose chain they must precede
        agent = Agent(cfg, nc, agent_id, root, runtime, network)
        await agent.containers.restore()
        svc = bus.BusService(nc, subjects.RUNTIME_AGENT, description="containers and images of one host",
                             metadata={"agent_id": agent_id, "runtime": runtime.info.name})
        agent.register(svc)
        from services.runtime_agent import metrics
        metrics.watch(agent_id, lambda: [c.state.status for c in agent.containers.list(all=True)], agent.heartbeat)
        NetworkVerbs(agent_id, usernets, network, agent.containers).register(svc)  # networks
        beats = Heartbeats(await open_bucket(nc), agent_id, agent.heartbeat)
        await beats.start()
        agent.containers.on_change = beats.poke
        store = agent.containers.store
        mirror = await ContainerMirror.open(nc, agent_id, store.find)  # lifecycle: `ps` of a gone agent
        store.on_change = mirror.mark
        await mirror.start([c.id for c in store.all()])
        await agent.verbs.plane.start()  # cp's bytes over HTTP on loopback (verbs/cpplane.py)
        await svc.start()
        await agent.interactive.start()
        log.info("runtime-agent %s ready", agent_id)
        await asyncio.Event().wait()
    finally:
        if svc is not None:
            await svc.stop(drain_timeout=5)
        if beats is not None:
            with contextlib.suppress(Exception):
                await beats.stop()
        idle = agent is not None and not agent.containers.list(all=True)
        if mirror is not None:  # its records stay: they are what `ps` shows of this agent while it is gone
            agent.containers.store.on_change = None
            with contextlib.suppress(Exception):
                await mirror.stop()
        if agent is not None:
            if hasattr(agent, "verbs"):  # (registered)
                await agent.verbs.plane.close()
            await agent.interactive.close()
            agent.containers.on_change = None
            await agent.containers.close()
            await agent.puller.close()
        runtime.close()
        # An agent with no container leaves no bridge or chain behind; otherwise they
        # stay for the containers, which outlive the agent.
        with contextlib.suppress(Exception):
            await network.close(remove_all=idle)
        with contextlib.suppress(Exception):
            await usernets.close(remove_all=idle)  # networks: the records stay for the next start
            await usernets.dns.close()
        await nc.drain()
