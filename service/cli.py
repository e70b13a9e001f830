"""The `identity-service` command line.

`serve` and `migrate` run the server in this process (service.runtime.server.main, with the
server's own flags passed through). Every other command is a thin gRPC client of a running
server: it builds one request with the generated stubs, sends it, and prints the answer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import uuid
from typing import Any, Callable, Iterator

import click
import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Exit codes of the client commands (also in the group's --help).
EXIT_REFUSED = 2  # the request was refused as given: fix the request or the data
EXIT_UNAVAILABLE = 3  # the server or the network failed: retrying may help
EXIT_AUTH = 4  # the API key is missing, unknown or not allowed this workspace

REFUSED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

EXIT_CODES_HELP = (
    "\b\n"
    "Exit codes of the client commands:\n"
    "  0  success\n"
    "  2  refused as given: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,\n"
    "     ALREADY_EXISTS, OUT_OF_RANGE (also click's own usage errors)\n"
    "  3  server or network: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,\n"
    "     ABORTED, INTERNAL, UNKNOWN and every other code\n"
    "  4  UNAUTHENTICATED, PERMISSION_DENIED\n"
    "A refusal prints one line to stderr: `error: CODE REASON: message`."
)

MODES = {
    "email-or-id": pb.IDENTIFIER_MODE_EMAIL_OR_ID,
    "id-only": pb.IDENTIFIER_MODE_ID_ONLY,
    "email-only": pb.IDENTIFIER_MODE_EMAIL_ONLY,
}


# ---------------------------------------------------------------------------------------------
# Connection, errors and output


class Client:
    """One channel to the server, the API key's metadata and the output format."""

    def __init__(self, address: str, api_key: str | None, as_json: bool, timeout: float | None,
                 tls: bool, ca_cert: str | None) -> None:
        if tls or ca_cert:
            root = open(ca_cert, "rb").read() if ca_cert else None
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root))
        else:
            self.channel = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.as_json = as_json
        self.timeout = timeout
        self.identity = pb_grpc.IdentityServiceStub(self.channel)
        self.workspaces = pb_grpc.WorkspaceServiceStub(self.channel)

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=self.timeout)

    def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Iterator[Any]:
        return method(request, metadata=self.metadata, timeout=timeout)


def refusal_line(error: grpc.RpcError) -> str:
    """`error: CODE REASON: message`, from the google.rpc.Status the server attached."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = error.details() if callable(getattr(error, "details", None)) else str(error)
    reason = ""
    fields: list[str] = []
    try:
        status = rpc_status.from_call(error)
    except Exception:  # a status that does not match the call's code: keep the plain one
        status = None
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = reason or info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations if v.field]
    head = f"{code.name} {reason}" if reason else code.name
    line = f"error: {head}: {message or ''}"
    if fields and not any(f in line for f in fields):
        line += f" (fields: {', '.join(fields)})"
    return " ".join(line.split())  # one line, whatever the message holds


def exit_code(code: grpc.StatusCode) -> int:
    if code in REFUSED_CODES:
        return EXIT_REFUSED
    if code in AUTH_CODES:
        return EXIT_AUTH
    return EXIT_UNAVAILABLE


def fail(error: grpc.RpcError) -> None:
    click.echo(refusal_line(error), err=True)
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    sys.exit(exit_code(code))


def plain(value: Any) -> Any:
    """Struct numbers are doubles: print a whole one as an integer (3, not 3.0), as proto JSON does."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def to_dict(message: Any) -> dict[str, Any]:
    return plain(json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    ))


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, sort_keys=False))


def settings_lines(settings: pb.WorkspaceSettings) -> list[str]:
    return [
        f"workspace:                 {settings.workspace_id}",
        f"identifier_mode:           {pb.IdentifierMode.Name(settings.identifier_mode).removeprefix('IDENTIFIER_MODE_')}",
        f"email_updatable_by_id:     {str(settings.email_updatable_by_id).lower()}",
        f"sole_identifier_updatable: {str(settings.sole_identifier_updatable).lower()}",
        f"auto_merge:                {str(settings.auto_merge).lower()}",
        f"event_retention_days:      {settings.event_retention_days}",
        f"max_calls_per_second:      {settings.max_calls_per_second or 'server default'}",
        f"max_concurrent_calls:      {settings.max_concurrent_calls or 'server default'}",
    ]


def person_lines(person: pb.Person) -> list[str]:
    attributes = plain(json_format.MessageToDict(person.attributes)) if person.HasField("attributes") else {}
    lines = [
        f"cio_id:     {person.cio_id}",
        f"id:         {person.id if person.HasField('id') else '-'}",
        f"email:      {person.email if person.HasField('email') else '-'}",
        f"attributes: {json.dumps(attributes, ensure_ascii=False) if attributes else '-'}",
    ]
    if person.HasField("create_time"):
        lines.append(f"created:    {person.create_time.ToJsonString()}")
    if person.HasField("update_time"):
        lines.append(f"updated:    {person.update_time.ToJsonString()}")
    return lines


def person_ref(cio_id: str | None, id_: str | None, email: str | None) -> pb.PersonRef:
    given = [(name, value) for name, value in (("cio_id", cio_id), ("id", id_), ("email", email)) if value is not None]
    if len(given) != 1:
        raise click.UsageError("name the person by exactly one of --cio-id, --id, --email")
    name, value = given[0]
    return pb.PersonRef(**{name: value})


def parse_attr(pair: str) -> tuple[str, Any]:
    """`name=value`: the value as JSON when it parses, else the string as given."""
    name, sep, raw = pair.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{pair!r} is not name=value", param_hint="--attr")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


# ---------------------------------------------------------------------------------------------
# Options shared by the client commands


def client_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--address, --api-key, --json, --timeout, --tls, --ca-cert; passes `client`."""
    options = [
        click.option("--address", envvar="IDENTITY_ADDRESS", default=DEFAULT_ADDRESS, show_default=True,
                     show_envvar=True, help="host:port of the server"),
        click.option("--api-key", envvar="API_KEY", default=None, show_default=False, show_envvar=True,
                     help="API key, sent as 'authorization: Bearer <key>' (never printed)"),
        click.option("--json", "as_json", is_flag=True, help="print JSON instead of text"),
        click.option("--timeout", type=float, default=30.0, show_default=True,
                     help="seconds per call (streams: see the command)"),
        click.option("--tls", is_flag=True, help="connect with TLS (system roots unless --ca-cert)"),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="PEM roots to trust; implies --tls"),
    ]

    def wrapper(address: str, api_key: str | None, as_json: bool, timeout: float, tls: bool,
                ca_cert: str | None, **kwargs: Any) -> Any:
        client = Client(address, api_key, as_json, timeout if timeout > 0 else None, tls, ca_cert)
        try:
            return function(client, **kwargs)
        except grpc.RpcError as error:
            fail(error)
        finally:
            client.channel.close()

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def settings_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--mode", type=click.Choice(list(MODES), case_sensitive=False), default=None,
                     help="identifier mode (R1)"),
        click.option("--email-updatable-by-id/--no-email-updatable-by-id", default=None,
                     help="EMAIL_OR_ID: an id reference may change a set email (R20)"),
        click.option("--sole-identifier-updatable/--no-sole-identifier-updatable", default=None,
                     help="ID_ONLY/EMAIL_ONLY: the sole identifier may change through a cio_id (R22)"),
        click.option("--auto-merge/--no-auto-merge", default=None, help="merge automatically when R13 allows"),
        click.option("--retention-days", type=int, default=None, help="days the change log keeps (1-3650)"),
        click.option("--max-calls-per-second", type=int, default=None,
                     help="fair share: calls per second per server process (0: the server's default; admin key)"),
        click.option("--max-concurrent-calls", type=int, default=None,
                     help="fair share: calls at once per server process (0: the server's default; admin key)"),
        click.option("--validate-only", is_flag=True, help="check the request, store nothing"),
        click.option("--request-id", default="", help="idempotency key (R70)"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def chosen_settings(mode: str | None, email_updatable_by_id: bool | None, sole_identifier_updatable: bool | None,
                    auto_merge: bool | None, retention_days: int | None, max_calls_per_second: int | None = None,
                    max_concurrent_calls: int | None = None) -> dict[str, Any]:
    """The settings fields given on the command line, by proto field name."""
    given = {
        "identifier_mode": MODES[mode.lower()] if mode else None,
        "email_updatable_by_id": email_updatable_by_id,
        "sole_identifier_updatable": sole_identifier_updatable,
        "auto_merge": auto_merge,
        "event_retention_days": retention_days,
        "max_calls_per_second": max_calls_per_second,
        "max_concurrent_calls": max_concurrent_calls,
    }
    return {name: value for name, value in given.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Commands


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run the identity service, or talk to a running one over gRPC.

    \b
    Server:  serve, migrate (the server's own flags, see `serve --help`)
    Client:  workspace create|show|update, person get|identify|delete,
             export, watch (--address, --api-key, --json on each)
    Keys:    keys create|list|revoke (in the database: DATABASE_URL)
    """


def _run_server(ctx: click.Context, argv: list[str]) -> None:
    from service.runtime import server

    if any(a in ("-h", "--help") for a in argv):
        click.echo(ctx.get_help())
        click.echo("\nThe server's flags:\n")
        argv = ["--help"]
    try:
        code = server.main(argv)
    except SystemExit as done:  # argparse: --help or a bad flag
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    ctx.exit(code or 0)


PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command(context_settings=PASS_THROUGH)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def serve(ctx: click.Context, server_args: tuple[str, ...]) -> None:
    """Run the gRPC server in the foreground.

    Every argument goes to the server unchanged (the same as `python -m service`), e.g.
    `identity-service serve --listen 0.0.0.0:50051 --database-url postgresql://...`.
    """
    _run_server(ctx, list(server_args))


@cli.command(context_settings=PASS_THROUGH)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def migrate(ctx: click.Context, server_args: tuple[str, ...]) -> None:
    """Apply the database migrations and exit (the server's --migrate-only).

    Takes the server's flags, e.g. `identity-service migrate --database-url postgresql://...`.
    """
    if any(a in ("-h", "--help") for a in server_args):
        _run_server(ctx, ["--help"])
    _run_server(ctx, ["--migrate-only", *server_args])


@cli.group()
def workspace() -> None:
    """Create, show and change a workspace's settings."""


@workspace.command("create", epilog=EXIT_CODES_HELP)
@click.argument("workspace_id")
@settings_options
@client_options
def workspace_create(client: Client, workspace_id: str, validate_only: bool, request_id: str,
                     **settings: Any) -> None:
    """Create WORKSPACE_ID (ALREADY_EXISTS when it exists). Unset options take the defaults."""
    given = chosen_settings(**settings)
    request = pb.CreateWorkspaceRequest(workspace_id=workspace_id, validate_only=validate_only, request_id=request_id)
    if given:  # settings are taken as given: start from the documented defaults
        defaults = {"identifier_mode": pb.IDENTIFIER_MODE_EMAIL_OR_ID, "email_updatable_by_id": True,
                    "sole_identifier_updatable": False, "auto_merge": True, "event_retention_days": 0}
        request.settings.CopyFrom(pb.WorkspaceSettings(**{**defaults, **given}))
    response = client.call(client.workspaces.CreateWorkspace, request)
    print_settings(client, response.settings, "created" if not validate_only else "valid (nothing stored)")


@workspace.command("show", epilog=EXIT_CODES_HELP)
@click.argument("workspace_id")
@client_options
def workspace_show(client: Client, workspace_id: str) -> None:
    """Print WORKSPACE_ID's settings."""
    response = client.call(client.identity.GetSettings, pb.GetSettingsRequest(workspace_id=workspace_id))
    print_settings(client, response.settings, None)


@workspace.command("update", epilog=EXIT_CODES_HELP)
@click.argument("workspace_id")
@settings_options
@client_options
def workspace_update(client: Client, workspace_id: str, validate_only: bool, request_id: str,
                     **settings: Any) -> None:
    """Change WORKSPACE_ID's settings: only the options given (they make the update_mask)."""
    given = chosen_settings(**settings)
    if not given:
        raise click.UsageError("give at least one setting to change (see --help)")
    request = pb.UpdateSettingsRequest(
        workspace_id=workspace_id, settings=pb.WorkspaceSettings(**given),
        validate_only=validate_only, request_id=request_id,
    )
    request.update_mask.paths.extend(given)
    response = client.call(client.workspaces.UpdateSettings, request)
    print_settings(client, response.settings, "updated" if not validate_only else "valid (nothing stored)")


def print_settings(client: Client, settings: pb.WorkspaceSettings, title: str | None) -> None:
    if client.as_json:
        emit_json(to_dict(settings))
        return
    if title:
        click.echo(title)
    click.echo("\n".join(settings_lines(settings)))


def ref_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--workspace", "-w", required=True, envvar="IDENTITY_WORKSPACE", show_envvar=True,
                     help="the workspace"),
        click.option("--cio-id", default=None, help="the person's cio_id"),
        click.option("--id", "id_", default=None, help="the person's id"),
        click.option("--email", default=None, help="the person's email"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.group()
def person() -> None:
    """Identify, read and delete people."""


@person.command("get", epilog=EXIT_CODES_HELP)
@ref_options
@client_options
def person_get(client: Client, workspace: str, cio_id: str | None, id_: str | None, email: str | None) -> None:
    """Print one person, named by exactly one of --cio-id, --id, --email."""
    ref = person_ref(cio_id, id_, email)
    response = client.call(client.identity.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref))
    if client.as_json:
        emit_json(to_dict(response.person))
    else:
        click.echo("\n".join(person_lines(response.person)))


@person.command("identify", epilog=EXIT_CODES_HELP)
@ref_options
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE",
              help="an attribute (repeatable); VALUE is JSON when it parses (42, true, null, "
                   "\"007\", {...}), else the string as given; null removes it")
@click.option("--update-only", is_flag=True, help="refuse instead of creating a person")
@click.option("--validate-only", is_flag=True, help="decide and report, store nothing")
@click.option("--request-id", default="", help="idempotency key (R70)")
@client_options
def person_identify(client: Client, workspace: str, cio_id: str | None, id_: str | None, email: str | None,
                    attrs: tuple[str, ...], update_only: bool, validate_only: bool, request_id: str) -> None:
    """Add or update a person by --id and/or --email (or --cio-id), with attributes."""
    request = pb.IdentifyRequest(workspace_id=workspace, update_only=update_only,
                                 validate_only=validate_only, request_id=request_id)
    if cio_id is not None:
        request.cio_id = cio_id
    if id_ is not None:
        request.id = id_
    if email is not None:
        request.email = email
    if attrs:
        values = dict(parse_attr(pair) for pair in attrs)
        struct = struct_pb2.Struct()
        struct.update(values)
        request.attributes.CopyFrom(struct)
    response = client.call(client.identity.Identify, request)
    if client.as_json:
        emit_json(to_dict(response))
        return
    outcome = pb.IdentifyOutcome.Name(response.outcome).removeprefix("IDENTIFY_OUTCOME_")
    click.echo(f"outcome:    {outcome}" + (" (validate only: nothing stored)" if validate_only else ""))
    click.echo("\n".join(person_lines(response.person)))
    if response.merged_cio_ids:
        click.echo(f"merged:     {', '.join(response.merged_cio_ids)}")
    if response.decision.rule:
        click.echo(f"rule:       {response.decision.rule}")


@person.command("delete", epilog=EXIT_CODES_HELP)
@ref_options
@click.option("--erase", is_flag=True, help="also erase the person's history (R54)")
@click.option("--validate-only", is_flag=True, help="check the request, delete nothing")
@click.option("--request-id", default="", help="idempotency key (R70)")
@client_options
def person_delete(client: Client, workspace: str, cio_id: str | None, id_: str | None, email: str | None,
                  erase: bool, validate_only: bool, request_id: str) -> None:
    """Delete one person, named by exactly one of --cio-id, --id, --email."""
    ref = person_ref(cio_id, id_, email)
    request = pb.DeletePersonRequest(workspace_id=workspace, person=ref, erase=erase,
                                     validate_only=validate_only, request_id=request_id)
    response = client.call(client.identity.DeletePerson, request)
    if client.as_json:
        emit_json(to_dict(response))
    else:
        click.echo(f"{'would delete' if validate_only else 'deleted'} {response.cio_id}")


@cli.command("export", epilog=EXIT_CODES_HELP)
@click.option("--workspace", "-w", required=True, envvar="IDENTITY_WORKSPACE", show_envvar=True,
              help="the workspace")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="jsonl: one person per line as it streams; csv: ImportPeople's columns (cio_id, id, "
                   "email, one column per attribute; non-string values as JSON), written at the end")
@client_options
def export(client: Client, workspace: str, fmt: str) -> None:
    """Write every person of the workspace to stdout (ExportPeople), in cio_id order.

    --timeout does not apply: the stream runs until it ends. --json changes nothing here.
    """
    responses = client.stream(client.identity.ExportPeople, pb.ExportPeopleRequest(workspace_id=workspace))
    if fmt == "jsonl":
        for response in responses:
            for p in response.people:
                emit_json(to_dict(p))
        return
    people = [p for response in responses for p in response.people]
    rows = []
    names: list[str] = []
    seen: set[str] = set()
    for p in people:
        attributes = plain(json_format.MessageToDict(p.attributes)) if p.HasField("attributes") else {}
        for name in attributes:
            if name not in seen:
                seen.add(name)
                names.append(name)
        rows.append((p, attributes))
    names.sort()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cio_id", "id", "email", *names])
    for p, attributes in rows:
        cells = [p.cio_id, p.id if p.HasField("id") else "", p.email if p.HasField("email") else ""]
        for name in names:
            value = attributes.get(name)
            cells.append("" if value is None else value if isinstance(value, str) else json.dumps(value))
        writer.writerow(cells)
    click.echo(out.getvalue(), nl=False)


IMPORT_CHUNK_BYTES = 1 << 20


def _import_requests(workspace: str, import_id: str, path: str, sent: Callable[[int], None]) -> Iterator[Any]:
    yield pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=import_id)
    with open(path, "rb") as file:
        while chunk := file.read(IMPORT_CHUNK_BYTES):
            sent(len(chunk))
            yield pb.StreamImportPeopleRequest(chunk=chunk)


def _write_refused(path: str, refused: dict[int, pb.ImportRowResult]) -> str:
    """The refused rows, beside the file: their number, code, reason and message, then the
    row's own cells (read again from the file, numbered as the server numbers them)."""
    out_path = f"{os.path.splitext(path)[0]}.refused.csv"
    with open(path, newline="", encoding="utf-8-sig") as source, open(out_path, "w", newline="") as out:
        reader, writer = csv.reader(source), csv.writer(out, lineterminator="\n")
        header = next(reader, [])
        writer.writerow(["row", "code", "reason", "message", *header])
        number = 0
        for cells in reader:
            if not cells or cells == [""]:
                continue
            number += 1
            result = refused.get(number)
            if result is not None:
                reason = next((r for r in _reasons(result.error)), "")
                code = next((c.name for c in grpc.StatusCode if c.value[0] == result.error.code), str(result.error.code))
                writer.writerow([number, code, reason, result.error.message, *cells])
    return out_path


def _reasons(status: Any) -> Iterator[str]:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            yield info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            yield from (v.reason for v in bad.field_violations)


@cli.command("import", epilog=EXIT_CODES_HELP)
@click.argument("path", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--workspace", "-w", required=True, envvar="IDENTITY_WORKSPACE", show_envvar=True,
              help="the workspace")
@click.option("--resume", is_flag=True,
              help="continue the last import of this file (its id is in FILE.csv.import-id): rows applied are skipped")
@click.option("--progress/--no-progress", default=True, show_default=True, help="show a progress bar on stderr")
@client_options
def import_(client: Client, path: str, workspace: str, resume: bool, progress: bool) -> None:
    """Import a CSV file of any size (StreamImportPeople): a header row, then one person per row
    (cio_id, id, email, other columns as attributes).

    Rows are applied as identifying them one by one would (R80), a batch at a time. An import
    stopped anywhere (Ctrl-C, a network failure, the server restarted) has applied a prefix of
    the file: run it again with --resume to apply the rest, none twice (R81). Its id is kept in
    FILE.csv.import-id. Refused rows are written to FILE.refused.csv, with their reason.
    --timeout does not apply: the import runs until the file ends.
    """
    from tqdm import tqdm

    id_path = f"{path}.import-id"
    if resume:
        try:
            import_id = open(id_path).read().strip()
        except FileNotFoundError:
            raise click.UsageError(f"--resume: no earlier import of this file ({id_path} is missing)") from None
    else:
        import_id = str(uuid.uuid4())
        with open(id_path, "w") as out:
            out.write(import_id + "\n")
    size = os.path.getsize(path)
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, file=sys.stderr,
               desc=os.path.basename(path), dynamic_ncols=True)
    refused: dict[int, pb.ImportRowResult] = {}
    last = pb.ImportProgress()
    responses = client.stream(client.identity.StreamImportPeople, _import_requests(workspace, import_id, path, bar.update))
    try:
        for response in responses:
            for row in response.refused_rows:
                refused[row.row] = row
            last = response.progress
            bar.set_postfix(applied=last.rows_applied, refused=last.rows_refused, rows_s=int(last.rows_per_second),
                            refresh=False)
    except KeyboardInterrupt:
        responses.cancel()
        bar.close()
        click.echo(f"interrupted: continue with --resume (import {import_id})", err=True)
        sys.exit(130)
    except grpc.RpcError as error:
        bar.close()
        click.echo(f"stopped after {last.rows_applied + last.rows_refused} rows; continue with --resume "
                   f"(import {import_id})", err=True)
        fail(error)
    bar.close()
    refused_path = _write_refused(path, refused) if refused else None
    summary = {
        "import_id": import_id, "rows_read": last.rows_read, "rows_applied": last.rows_applied,
        "rows_refused": last.rows_refused, "rows_skipped": last.rows_skipped,
        "rows_per_second": last.rows_per_second, "refused_file": refused_path,
    }  # fmt: skip
    if client.as_json:
        emit_json(summary)
        return
    line = f"imported {path}: {last.rows_applied} applied, {last.rows_refused} refused"
    if last.rows_skipped:
        line += f", {last.rows_skipped} skipped (applied before)"
    click.echo(line + f"; {last.rows_per_second:.0f} rows/s")
    if refused_path:
        click.echo(f"refused rows: {refused_path}")


@cli.command("watch", epilog=EXIT_CODES_HELP)
@click.option("--workspace", "-w", required=True, envvar="IDENTITY_WORKSPACE", show_envvar=True,
              help="the workspace")
@click.option("--after", type=int, default=0, show_default=True,
              help="print the events after this sequence (0: from the oldest kept)")
@click.option("--until-caught-up", is_flag=True, help="stop once the events committed so far are printed")
@client_options
def watch(client: Client, workspace: str, after: int, until_caught_up: bool) -> None:
    """Print the workspace's change log (WatchChanges), one JSON line per event.

    Without --until-caught-up it follows new events until interrupted (Ctrl-C); resume with
    --after set to the last sequence printed. --timeout applies only with --until-caught-up.
    --json changes nothing here: the output is always JSON lines.
    """
    request = pb.WatchChangesRequest(workspace_id=workspace, after_sequence=after, end_when_caught_up=until_caught_up)
    responses = client.stream(client.identity.WatchChanges, request, client.timeout if until_caught_up else None)
    try:
        for response in responses:
            for event in response.events:
                emit_json(to_dict(event))
                sys.stdout.flush()
    except KeyboardInterrupt:
        responses.cancel()
        sys.exit(130)


from service.cli_keys import keys  # noqa: E402 - the `keys` group, in a module of its own

cli.add_command(keys)


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="identity-service")


if __name__ == "__main__":  # pragma: no cover
    main()
