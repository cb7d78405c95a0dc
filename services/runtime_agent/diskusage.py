"""`system df` on one host: bytes on disk of its image layers, containers' writable layers, volumes.

Each figure is what `du -s -B1` prints for the same directories (blocks allocated,
hard links once per kind): an image layer shared by two images counts once in the
total, and as `shared` in each image's row.
"""

from __future__ import annotations

from collections import Counter

from services.runtime_agent.volumes.mounts import users
from services.runtime_agent.volumes.store import disk_usage
from shared.errors import NotFound
from shared.messages.diskusage import DfEntry, DfKind, DfReply, DfRequest
from shared.oci.digest import Digest


def measure(req: DfRequest, host: str, containers, images, snapshots, volumes) -> DfReply:
    all_containers = containers.store.all()
    used_images = {c.config.image_digest for c in all_containers}
    recs = images.list()
    layer_size: dict[str, int] = {}
    for rec in recs:
        for d in rec.diff_ids:
            if d not in layer_size:
                layer_size[d] = disk_usage(snapshots.path(Digest(d))) if snapshots.exists(Digest(d)) else 0
    users_of = Counter(d for rec in recs for d in set(rec.diff_ids))
    used_layers = {d for rec in recs if rec.digest in used_images for d in rec.diff_ids}
    img_entries = []
    for rec in recs:
        layers = set(rec.diff_ids)
        img_entries.append(DfEntry(name=(rec.references or [rec.digest])[0],
                                   size=sum(layer_size[d] for d in layers),
                                   shared=sum(layer_size[d] for d in layers if users_of[d] > 1),
                                   active=rec.digest in used_images))
    images_kind = DfKind(total=len(recs), active=sum(e.active for e in img_entries), size=sum(layer_size.values()),
                         reclaimable=sum(s for d, s in layer_size.items() if d not in used_layers),
                         entries=img_entries if req.verbose else [])
    c_entries, uppers = [], []
    for c in all_containers:
        try:
            upper = snapshots.active(c.id).upper
        except NotFound:
            continue
        uppers.append(str(upper))
        c_entries.append(DfEntry(name=c.name, size=disk_usage(upper), active=c.state.status == "running"))
    containers_kind = DfKind(total=len(c_entries), active=sum(e.active for e in c_entries),
                             size=sum(e.size for e in c_entries),
                             reclaimable=sum(e.size for e in c_entries if not e.active),
                             entries=c_entries if req.verbose else [])
    v_entries = [DfEntry(name=v.name, size=volumes.size(v.name), active=bool(users(all_containers, v.name)))
                 for v in volumes.all()]
    volumes_kind = DfKind(total=len(v_entries), active=sum(e.active for e in v_entries),
                          size=sum(e.size for e in v_entries),
                          reclaimable=sum(e.size for e in v_entries if not e.active),
                          entries=v_entries if req.verbose else [])
    paths = {"images": [str(snapshots.path(Digest(d))) for d in layer_size if snapshots.exists(Digest(d))],
             "containers": uppers, "volumes": [str(volumes.data(v.name)) for v in volumes.all()]}
    return DfReply(host=host, images=images_kind, containers=containers_kind, volumes=volumes_kind, paths=paths)
