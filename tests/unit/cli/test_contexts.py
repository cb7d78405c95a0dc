"""Which stack a CLI command reaches: flags, environment, contexts, the data dir's stack.json."""

from __future__ import annotations

import pytest

from services.cli import contexts
from shared import stackfile
from shared.config import DEFAULT_NATS_URL
from shared.errors import InvalidArgument, NotFound


@pytest.fixture(autouse=True)
def user(tmp_path, monkeypatch):
    """A user of their own: config dir, no DOCKYARD_* settings."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for k in ("DOCKYARD_NATS_URL", "DOCKYARD_DATA_DIR", "DOCKYARD_REGISTRY_ADDR", "DOCKYARD_CONTEXT"):
        monkeypatch.delenv(k, raising=False)


def running(data_dir, nats: str, registry: str):
    data_dir.mkdir(parents=True, exist_ok=True)
    stackfile.write(data_dir, stackfile.StackInfo(nats_url=nats, registry=registry, services=["layer-store"]))
    return data_dir


def resolve(context=None, nats_url=None, data_dir=None):
    return contexts.resolve(context=context, nats_url=nats_url, data_dir=data_dir)


def with_contexts(**named: contexts.Context) -> None:
    contexts.save_file(contexts.ContextFile(contexts=named))


def test_a_data_dir_gives_the_ports_its_stack_recorded(tmp_path, monkeypatch):
    d = running(tmp_path / "a", "nats://127.0.0.1:4301", "127.0.0.1:5301")
    name, cfg = resolve(data_dir=str(d))
    assert (name, cfg.nats_url, cfg.registry_addr) == ("default", "nats://127.0.0.1:4301", "127.0.0.1:5301")
    monkeypatch.setenv("DOCKYARD_DATA_DIR", str(d))
    assert resolve()[1].nats_url == "nats://127.0.0.1:4301"
    # an explicit URL still wins over what the stack recorded
    assert resolve(nats_url="nats://127.0.0.1:9")[1].nats_url == "nats://127.0.0.1:9"


def test_a_chosen_data_dir_without_a_stack_reaches_no_nats(tmp_path):
    _, cfg = resolve(data_dir=str(tmp_path / "empty"))
    assert cfg.nats_url == ""


def test_contexts_in_docker_order(tmp_path, monkeypatch):
    a = running(tmp_path / "a", "nats://127.0.0.1:4301", "127.0.0.1:5301")
    b = running(tmp_path / "b", "nats://127.0.0.1:4302", "127.0.0.1:5302")
    with_contexts(one=contexts.Context(data_dir=str(a)), two=contexts.Context(data_dir=str(b)),
                  far=contexts.Context(nats_url="nats://10.1.2.3:4222", registry="10.1.2.3:5000"))
    f = contexts.load_file()
    f.current = "one"
    contexts.save_file(f)
    assert resolve()[0] == "one" and resolve()[1].nats_url == "nats://127.0.0.1:4301"
    monkeypatch.setenv("DOCKYARD_CONTEXT", "two")
    assert resolve()[1].registry_addr == "127.0.0.1:5302"
    assert resolve(context="far")[1].nats_url == "nats://10.1.2.3:4222"
    # settings given for this command make it the default context, like DOCKER_HOST
    assert resolve(data_dir=str(a))[0] == "default"
    monkeypatch.setenv("DOCKYARD_NATS_URL", "nats://127.0.0.1:9")
    assert resolve() == ("default", resolve()[1]) and resolve()[1].nats_url == "nats://127.0.0.1:9"
    # ... but a context asked for by flag wins over the environment
    assert resolve(context="one")[1].nats_url == "nats://127.0.0.1:4301"
    with pytest.raises(InvalidArgument):
        resolve(context="one", data_dir=str(b))
    with pytest.raises(NotFound):
        resolve(context="nope")


def test_the_default_data_dir_without_a_stack_keeps_the_default_url(tmp_path):
    """A NATS of one's own on 4222 (services run by `dockyard serve`) still works with no settings."""
    import os
    import subprocess
    import sys
    code = ("from services.cli import contexts\n"
            "name, cfg = contexts.resolve(context=None, nats_url=None, data_dir=None)\n"
            "print(name, cfg.data_dir, cfg.nats_url)")
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # the default data dir lives under HOME
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["default", str(tmp_path / "home" / ".local/share/dockyard"), DEFAULT_NATS_URL]


def test_a_broken_contexts_file_is_reported(tmp_path):
    path = contexts.config_dir() / "contexts.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="contexts.json"):
        resolve()
