"""The OCI runtime layer: probe crun/runc, build config.json, run containers under shims."""

from shared.runtime.container import ContainerState, Runtime
from shared.runtime.probe import RuntimeInfo, probe_runtime
from shared.runtime.spec import BindMount, ContainerSpec, build_config

__all__ = ["BindMount", "ContainerSpec", "ContainerState", "Runtime", "RuntimeInfo",
           "build_config", "probe_runtime"]
