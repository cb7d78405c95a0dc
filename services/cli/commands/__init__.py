"""One module per area of the command line; each exposes `register(subparsers)`.

A subcommand sets `func` to `async def handler(args, ctx) -> int` (the exit code);
`ctx` is a `services.cli.context.CliContext`. Modules are imported lazily by
`services.cli.main` so that start-up stays fast.
"""

# command name -> module that registers it (import on demand keeps `dockyard ps` lean)
MODULES = {
    "up": "stack", "serve": "stack", "status": "stack", "context": "contexts",
    "user": "registry", "grant": "registry", "repo": "registry", "login": "registry",
    "logout": "registry",
    "images": "images", "tag": "images", "push": "images", "pull": "images", "rmi": "images",
    "build": "build", "import": "build", "history": "build",
    "run": "containers", "ps": "containers", "inspect": "containers", "agents": "containers",
    "logs": "lifecycle", "stop": "lifecycle", "start": "lifecycle", "rm": "lifecycle", "kill": "lifecycle",
    "gc": "gc", "fleet": "fleet",
    "create": "create",  # runflags
    "down": "down",  # lifecycle
    # verbs: the everyday verbs of issue 11
    "wait": "verbs", "restart": "verbs", "rename": "verbs", "port": "verbs", "pause": "verbs",
    "unpause": "verbs", "update": "verbs", "top": "verbs", "stats": "verbs", "events": "events",
    "diff": "verbs", "cp": "copy", "export": "copy", "commit": "copy",
    "attach": "interactive", "exec": "interactive",  # interactive: attach, exec (run -i/-t: containers)
    "volume": "volumes",  # volumes (issue 12)
    "save": "archives", "load": "archives",  # volumes (issue 12): image archives
    "system": "system",  # volumes (issue 12): system df, system prune
    "container": "prune", "image": "prune", "builder": "prune",  # volumes (issue 12): ... prune
    "network": "networks",  # networks
}
