"""`dockyard user|grant|repo|login|logout`: registry users, permissions and credentials."""

from __future__ import annotations

import argparse
import getpass
import sys

from shared.errors import InvalidArgument


def register(sub: argparse._SubParsersAction) -> None:
    user = sub.add_parser("user", help="manage registry users")
    usub = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    p = usub.add_parser("add", help="add a user (or change its password with --update)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--update", action="store_true",
                   help="change an existing user: its password (with --password-stdin) and/or --role")
    p.add_argument("--role", choices=["reader", "operator", "admin", "none"],
                   help="what the user may do on the bus (new users: none, only registry grants)")
    p.set_defaults(func=user_add)
    p = usub.add_parser("creds", help="print bus credentials for a user with a role (admins only)")
    p.add_argument("name")
    p.set_defaults(func=user_creds)
    p = usub.add_parser("rm", help="remove a user and its grants")
    p.add_argument("name")
    p.set_defaults(func=user_rm)

    p = sub.add_parser("grant", help="let a user pull or push a repository (or `prefix/*`)")
    p.add_argument("user")
    p.add_argument("repository", help="repository, `team/*` or `*`")
    p.add_argument("access", choices=["pull", "push", "none"], help="push implies pull; none revokes")
    p.set_defaults(func=grant)

    repo = sub.add_parser("repo", help="repository visibility")
    rsub = repo.add_subparsers(dest="repo_command", metavar="COMMAND", required=True)
    for name, public in (("public", True), ("private", False)):
        p = rsub.add_parser(name, help=f"make a repository (or `prefix/*`) {name}")
        p.add_argument("repository")
        p.set_defaults(func=visibility, public=public)

    p = sub.add_parser("login", help="log in to a registry (the stack's by default)")
    p.add_argument("registry", nargs="?")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="insecure: prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=login)
    p = sub.add_parser("logout", help="forget the credentials of a registry")
    p.add_argument("registry", nargs="?")
    p.set_defaults(func=logout)


def _password(args, prompt: str = "Password: ") -> str:
    if getattr(args, "password", None):
        return args.password
    if args.password_stdin:
        pw = sys.stdin.read()
        pw = pw[:-1] if pw.endswith("\n") else pw
        pw = pw[:-1] if pw.endswith("\r") else pw
    elif sys.stdin.isatty():
        pw = getpass.getpass(prompt)
    else:
        raise InvalidArgument("no password: use --password-stdin")
    if not pw:
        raise InvalidArgument("the password must not be empty")
    return pw


def stack_repository(text: str, cfg) -> str:
    """A repository (or pattern) of the stack registry as the gateway stores it."""
    from shared.oci.reference import Reference
    from shared.registry.stackref import is_stack
    if text == "*" or text.endswith("/*"):
        return text
    ref = Reference.parse(text)
    if ref.tag or ref.digest:
        raise InvalidArgument(f"{text}: name a repository, without tag or digest")
    if not is_stack(ref, cfg):
        raise InvalidArgument(f"{ref.domain} is not this stack's registry ({cfg.registry_addr})")
    return ref.path


async def user_add(args, ctx) -> int:
    from shared import subjects
    from shared.messages.auth import UserAddRequest, UserReply
    role = None if args.role is None else ("" if args.role == "none" else args.role)
    # `user add NAME --update --role R` changes the role only
    password = "" if args.update and role is not None and not args.password_stdin else _password(args)
    bus = await ctx.bus()
    reply = await bus.request(subjects.REGISTRY_USER_ADD,
                              UserAddRequest(username=args.name, password=password, update=args.update, role=role),
                              UserReply, timeout=30)
    if ctx.json_output:
        ctx.print_json(reply)
    else:
        print(f"user {reply.username} {'updated' if args.update else 'added'} (bus role: {reply.role or 'none'})")
    return 0


async def user_creds(args, ctx) -> int:
    from shared import subjects
    from shared.messages.auth import UserCredsReply, UserCredsRequest
    reply = await (await ctx.bus()).request(subjects.REGISTRY_USER_CREDS, UserCredsRequest(username=args.name),
                                            UserCredsReply)
    sys.stdout.write(reply.creds)
    return 0


async def user_rm(args, ctx) -> int:
    from shared import subjects
    from shared.messages.auth import UserRmRequest
    from shared.messages.common import Ok
    await (await ctx.bus()).request(subjects.REGISTRY_USER_RM, UserRmRequest(username=args.name), Ok)
    print(f"user {args.name} removed")
    return 0


async def grant(args, ctx) -> int:
    from shared import subjects
    from shared.messages.auth import GrantReply, GrantRequest
    req = GrantRequest(username=args.user, repository=stack_repository(args.repository, ctx.config),
                       access=args.access)
    reply = await (await ctx.bus()).request(subjects.REGISTRY_GRANT, req, GrantReply)
    if ctx.json_output:
        ctx.print_json(reply)
    elif reply.actions:
        print(f"{reply.username} may {', '.join(reply.actions)} {reply.repository}")
    else:
        print(f"{reply.username}'s grant on {reply.repository} revoked")
    return 0


async def visibility(args, ctx) -> int:
    from shared import subjects
    from shared.messages.auth import VisibilityReply, VisibilityRequest
    req = VisibilityRequest(repository=stack_repository(args.repository, ctx.config), public=args.public)
    reply = await (await ctx.bus()).request(subjects.REGISTRY_REPO_VISIBILITY, req, VisibilityReply)
    if ctx.json_output:
        ctx.print_json(reply)
    else:
        print(f"{reply.repository} is {'public' if reply.public else 'private'}")
    return 0


def _registry(args, ctx) -> str:
    reg = args.registry or ctx.config.registry_addr
    for scheme in ("https://", "http://"):
        if reg.startswith(scheme):
            reg = reg[len(scheme):]
    return reg.rstrip("/")


async def login(args, ctx) -> int:
    import aiohttp

    from shared import http_client
    from shared.registry import CredentialStore, Credentials, RegistryClient
    registry = _registry(args, ctx)
    username = args.username
    if not username:
        if args.password_stdin or not sys.stdin.isatty():
            raise InvalidArgument("a username is required: -u USER")
        username = input("Username: ").strip()
    creds = Credentials(username, _password(args))
    async with http_client.session(ctx.config.fleet_ca, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await RegistryClient(session, registry, credentials=creds).ping()  # Unauthenticated if refused
    store = CredentialStore()
    store.store(registry, creds)
    print(f"Login Succeeded (credentials saved in {store.path})")
    return 0


async def logout(args, ctx) -> int:
    from shared.registry import CredentialStore
    registry = _registry(args, ctx)
    if CredentialStore().erase(registry):
        print(f"Removing login credentials for {registry}")
    else:
        print(f"Not logged in to {registry}")
    return 0
