"""The `fastsess` command: demo, gen-secret, cleanup, inspect, create-table, migrate-beaker and bench.

Commands that need the store or the secret read the `session.*` keys of an
INI file (`--config FILE.ini [--section app:main]`, or FASTSESS_CONFIG) with
the same coercion and checks as the middleware.
"""

from __future__ import annotations

import argparse
import configparser
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, beaker_compat, core
from .config import MIN_SECRET_CHARS, Config, collect_options
from .errors import ConfigError, CorruptRecord, FastsessError
from .session import SessionService
from .stores import StoredRecord, open_store
from .stores.base import EXPIRED, TOMBSTONE


def read_ini(path: str, section: str = "app:main") -> dict:
    """The options of one INI section, read as PasteDeploy reads them for the middleware.

    %(here)s and %(__file__)s are available, and a literal % is written %%, so the
    command sees the very secret the application does. A file that cannot be read
    or parsed is a ConfigError naming the file and line, never a value: INI files
    hold secrets.
    """
    full_path = os.path.abspath(path)
    parser = configparser.ConfigParser(defaults={"here": os.path.dirname(full_path), "__file__": full_path})
    parser.optionxform = str  # option names are case-sensitive, as in Paste Deploy
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
        if not parser.has_section(section):
            raise ConfigError(f"config file {path!r} has no [{section}] section")
        return {k: v for k, v in parser.items(section) if k not in ("here", "__file__")}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path!r}: {_ini_problem(exc)}") from None


def _ini_problem(exc: configparser.Error) -> str:
    """What is wrong, and where; configparser's own messages quote the raw line or value."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: expected a [section] header before the first option"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors[:5])
        return f"line {lines}: neither a [section] header nor an option (name = value)"
    if isinstance(exc, configparser.InterpolationSyntaxError):
        return (f"[{exc.section}] {exc.option}: a literal '%' must be written '%%' (values are "
                "interpolated, as PasteDeploy reads them, so that %(here)s works)")
    if isinstance(exc, configparser.InterpolationMissingOptionError):
        return (f"[{exc.section}] {exc.option}: %({exc.reference})s names no option of that section "
                "or of [DEFAULT]; a literal '%' is written '%%'")
    if isinstance(exc, configparser.InterpolationError):
        return f"[{exc.section}] {exc.option}: its %(...)s references loop or nest too deep"
    if isinstance(exc, (configparser.DuplicateSectionError, configparser.DuplicateOptionError)):
        return exc.message  # names the section, option and line; no value
    return f"cannot be parsed ({type(exc).__name__})"


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("FASTSESS_CONFIG")
    if not path:
        raise ConfigError("give --config FILE.ini (or set FASTSESS_CONFIG)")
    options = read_ini(path, args.section)
    if args.section.startswith(("filter:", "filter-app:")):
        # Paste gives a filter (or filter-app) its own section's keys as keyword arguments, where
        # plain names are allowed (the middleware reads them so); [DEFAULT]'s still need a prefix.
        # "use" and a filter-app's "next" are Paste's own keys, never passed on.
        own = _own_keys(path, args.section)
        local = {k: v for k, v in options.items() if k in own and k not in ("use", "next")}
        shared = {k: v for k, v in options.items() if k not in own}
        return Config(collect_options(shared, local))
    return Config(collect_options(options))


def _own_keys(path: str, section: str) -> set[str]:
    """The option names written in the section itself, not inherited from [DEFAULT]."""
    parser = configparser.ConfigParser(default_section="\x00", interpolation=None, strict=False)
    parser.optionxform = str
    with open(path, encoding="utf-8") as f:
        parser.read_file(f, source=path)
    return set(parser[section]) if parser.has_section(section) else set()


def cmd_demo(args: argparse.Namespace) -> int:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from .demo import make_demo_app

    class ThreadingServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *a: object) -> None:
            sys.stderr.write(f"{self.command} {self.path}\n")

    if args.data_dir is not None:
        _writable_dir(args.data_dir, "--data-dir")
    try:
        app = make_demo_app(args.data_dir)
    except OSError as exc:  # the default directory, under the system's temp dir, or its secret file
        hint = "" if args.data_dir else " (give --data-dir DIR)"
        raise ConfigError(f"the demo cannot write its data directory: {exc.strerror}{hint}") from None
    try:
        server = make_server(args.host, args.port, app, server_class=ThreadingServer, handler_class=QuietHandler)
    except OSError as exc:  # an unknown host, a port in use or one that needs privileges
        app.session_middleware.close()
        raise ConfigError(f"demo cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"fastsess demo on http://{args.host}:{server.server_port}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


#: gen-secret's range: the fewest random bytes whose URL-safe base64 is a secret the middleware
#: accepts, and a ceiling far past any need (the default, 48 bytes, is 384 bits).
SECRET_BYTES_MIN = math.ceil(MIN_SECRET_CHARS * 3 / 4)
SECRET_BYTES_MAX = 1024


def _secret_bytes(text: str) -> int:
    """--bytes: a count of random bytes that yields a usable secret."""
    try:
        count = int(text)
    except ValueError:
        count = None
    if count is None or not SECRET_BYTES_MIN <= count <= SECRET_BYTES_MAX:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX}, not {text!r}: "
            f"session.secret needs at least {MIN_SECRET_CHARS} characters, which {SECRET_BYTES_MIN} bytes give"
        )
    return count


def _positive_int(text: str) -> int:
    """--batch: a whole number of at least 1 (0 would never finish a cleanup)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return count


def _port_number(text: str) -> int:
    """--port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return port


def _writable_dir(path: str, flag: str) -> None:
    """Create path (with parents) and check a file can be written there; a ConfigError naming flag otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".fastsess-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create or write there: {exc.strerror}") from None


def cmd_gen_secret(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(args.bytes))
    return 0


#: stores whose server removes expired records by TTL: cleanup has nothing to do there
_SELF_EXPIRING = ("memcached", "redis")


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove expired records from the configured store, in batches."""
    config = _load(args)
    if config.store_type == "cookie":
        # An error, not a quiet success: a cleanup job pointed at cookie sessions was given the wrong
        # config, or outlived a switch to cookies, and exit 2 is what makes its owner look.
        raise ConfigError("cleanup has nothing to clean: session.type = cookie keeps each session in its "
                          "cookie, with no server-side store (give the config of an app with a store, or "
                          "remove this cleanup job)")
    if config.store_type == "memory":
        # This process would open a store of its own, always empty: "removed 0" would be a lie.
        raise ConfigError("cleanup cannot reach memory sessions: session.type = memory keeps them inside each "
                          "application process, which expires them itself (give the config of an app with a "
                          "file, lmdb or sql store, or remove this cleanup job)")
    if config.store_type in _SELF_EXPIRING:
        # Nothing to remove, and nothing to connect to: say so rather than "removed 0",
        # which would read the same whether or not the server is up.
        message = f"nothing to clean: session.type = {config.store_type} expires sessions itself (server TTL)"
        print(json.dumps({"removed": 0, "seconds": 0.0, "note": message}) if args.json else message)
        return 0
    store = open_store(config, boot_during_outage=False)
    total = 0
    started = time.monotonic()
    try:
        while True:
            removed = store.cleanup(time.time(), args.batch)
            total += removed
            if not args.json and sys.stderr.isatty():
                sys.stderr.write(f"\rremoved {total} expired records")
            if removed < args.batch:
                break
    finally:
        store.close()
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"removed": total, "seconds": round(elapsed, 3)}))
    else:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"removed {total} expired records in {elapsed:.2f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Verify an id cookie with the configured secret, then show its record's metadata and data."""
    config = _load(args)
    value = args.cookie
    if value.startswith(config.cookie_name + "="):
        value = value[len(config.cookie_name) + 1 :]
    value = value.strip().strip('"')
    service = SessionService(config, open_store(config, boot_during_outage=False))
    try:
        report = _inspect(service, value)
    finally:
        if service.store is not None:
            service.store.close()
    if report is None:
        if args.json:
            print(json.dumps({"verified": False}))
        else:
            print("cookie does not verify with the configured keys (forged, truncated or another secret)")
        return 1
    print(json.dumps(report, indent=None if args.json else 2, default=str))
    return 0


def _inspect(service: SessionService, value: str) -> dict | None:
    config = service.config
    if config.beaker_compat and beaker_compat.is_beaker_value(value):
        return _inspect_beaker(service, value)
    if service.cookie_only:
        sealed = service.open_sealed(value)
        if sealed is None:
            return None
        issued_at, last_access, expires_at, payload, key_index = sealed
        created, last_write, csrf_gen, domain, path, flash, data = core.unpack_record(payload[core.ID_BYTES :])
        return {
            "verified": True, "key_index": key_index, "sid": service.sid(core.b64url_encode(payload[: core.ID_BYTES])),
            "state": "cookie", "created": created, "last_access": last_access, "expires_at": expires_at,
            "domain": domain, "path": path, "data": json.loads(data),
        }
    opened = core.open_id_cookie(value, service.keys.id_keys, config.cookie_name)
    if opened is None:
        return None
    session_id, key_index = opened
    return _record_report(service, session_id, {"verified": True, "key_index": key_index})


def _inspect_beaker(service: SessionService, value: str) -> dict | None:
    """A Beaker cookie, as beaker_compat reads it: an id cookie finds the record migrate-beaker wrote."""
    config = service.config
    now = time.time()
    try:
        if beaker_compat.is_beaker_id(value[beaker_compat.TAG_CHARS :]):
            beaker_id = beaker_compat.open_id_cookie(value, config, now)
            return _record_report(service, beaker_id, {"verified": True, "format": "beaker id cookie"})
        opened = beaker_compat.open_cookie_session(value, config, now)
    except beaker_compat.BeakerCookieRefused:
        return None
    return {
        "verified": True, "format": "beaker cookie session", "state": "cookie", "created": opened.created,
        "last_access": opened.accessed, "domain": opened.domain, "path": opened.path,
        "data": json.loads(opened.data_bytes),
    }


def _record_report(service: SessionService, session_id: str, report: dict) -> dict:
    """`report`, completed with the sid and what the store holds for this verified session id."""
    config = service.config
    key = core.store_key(session_id)
    report["sid"] = service.sid(session_id)
    if service.cookie_only:  # a Beaker id cookie: its session was in a store this config does not have
        report["state"] = "no store (session.type = cookie keeps no server-side records)"
        return report
    if config.store_type == "memory":  # this process's memory store is not the application's
        report["state"] = "unknown (memory sessions live inside the application's process)"
        return report
    try:
        record = service.store.load(key)
    except CorruptRecord:  # the answer inspect is for: the cookie is good, its record is not
        report["state"] = "damaged (the store cannot read this record; the app treats it as missing)"
        return report
    if isinstance(record, StoredRecord):
        try:
            created, last_write, csrf_gen, domain, path, flash, data = core.unpack_record(
                service.open_record(key, record.blob)
            )
        except ValueError as exc:  # a blob that does not decrypt or unpack
            report.update(state=f"damaged ({exc})", version=record.version, expires_at=record.expires_at)
            return report
        report.update(
            state="live", version=record.version, created=created, last_write=last_write,
            last_access=record.last_access, expires_at=record.expires_at, domain=domain, path=path,
            data=json.loads(data),
        )
    else:
        report["state"] = {None: "missing or expired", TOMBSTONE: "tombstone", EXPIRED: "expired"}[record]
    return report


def cmd_create_table(args: argparse.Namespace) -> int:
    """Create the sql store's table where the application itself has no DDL rights."""
    config = _load(args)
    if config.store_type != "sql":
        raise ConfigError(f"create-table is for session.type = sql (or ext:database); this config uses "
                          f"{config.store_type}")
    store = open_store(config, boot_during_outage=False)  # building the sql store creates its table when missing
    try:
        table = store.table
        report = {
            "table": table.name,
            "schema": table.schema,
            "created": store.table_created,
            "database": store.engine.url.render_as_string(hide_password=True),
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report))
    else:
        name = f"{table.schema}.{table.name}" if table.schema else table.name
        state = "created" if report["created"] else "already exists, left as it is"
        print(f"table {name} {state} ({report['database']})")
    return 0


def cmd_migrate_beaker(args: argparse.Namespace) -> int:
    """Copy Beaker's stored sessions into the configured store: a bulk pass, then delta passes."""
    from .migrate import (
        STATE_FILE,
        Migration,
        describe_destination,
        open_source,
        parse_since,
        read_state,
        require_server_store,
        write_state,
    )

    config = _load(args)
    require_server_store(config)  # before the source: a network source may be slow to fail
    config_path = args.config or os.environ.get("FASTSESS_CONFIG", "")
    state_path = args.state or os.path.join(os.path.dirname(os.path.abspath(config_path)), STATE_FILE)
    if not args.dry_run:
        _check_state_writable(state_path)  # before anything is migrated: a pass it cannot record is redone whole
    source = open_source(args.from_type, args.from_data_dir, args.from_url, args.from_table, args.from_schema)
    if args.full:
        since = None
    elif args.since is not None:
        since = parse_since(args.since)
    else:
        since = read_state(state_path, source.describe(), describe_destination(config))
    try:
        # Opening a file, lmdb or sql store creates its directory, files or table: a dry run,
        # which writes nothing, checks the Beaker side only and leaves those untouched.
        dry = args.dry_run and config.store_type in ("file", "lmdb", "sql")
        store = None if dry else open_store(config, boot_during_outage=False)
    except BaseException:
        source.close()
        raise
    progress = _progress_printer(args.json)
    try:
        migration = Migration(config, SessionService(config, store), source)
        report = migration.run(since, dry_run=args.dry_run, progress=progress)
    finally:
        source.close()
        if store is not None:
            store.close()
        if progress is not None and sys.stderr.isatty():
            sys.stderr.write("\n")
    # A pass that found no session at all (a store not mounted yet, a path one level off) is not
    # recorded: the next run stays a bulk pass, which a delta pass would make of what appears later
    # only the sessions Beaker started since.
    recorded = not args.dry_run and report.seen > 0
    if recorded:
        write_state(state_path, report)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    summary = report.as_dict()
    when = ""
    if since is not None:
        when = f" of sessions changed since {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(since))}"
    print(f"{'dry run: ' if args.dry_run else ''}{report.mode} pass{when} from {report.source} "
          f"into the {config.store_type} store, {summary['seconds']} s")
    print("  " + ", ".join(f"{summary[k]} {k}" for k in (
        "seen", "migrated", "updated", "unchanged", "expired", "skipped", "refused")))
    for reason, count in sorted(report.skipped.items()):
        print(f"  skipped {count}: {reason}")
    for refusal in report.refused:
        print(f"  refused {refusal['ref']}: {refusal['reason']}")
    if report.refused_count > len(report.refused):
        print(f"  ... and {report.refused_count - len(report.refused)} more refused")
    if recorded:
        print(f"state saved in {state_path}: the next run is a delta pass (--full forces a bulk pass)")
    elif report.seen == 0:
        print(f"no Beaker sessions found in {report.source}; nothing recorded, so the next run is a bulk pass "
              "again (is this where Beaker keeps its sessions?)")
    if not config.beaker_compat:
        print("note: set session.beaker_compat = true, so that Beaker's cookies find these sessions")
    return 0


def _check_state_writable(path: str) -> None:
    """The state file can be written as write_state writes it: a .tmp file beside it, renamed over it."""
    if os.path.isdir(path):
        raise ConfigError(f"--state {path}: is a directory; give the path of a file")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "a", encoding="utf-8"):
            pass
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot write the migrate-beaker state file {path}: {exc.strerror} "
                          "(give --state FILE somewhere writable)") from None


def _progress_printer(quiet: bool):
    """Progress on stderr: a rewritten line on a terminal, else a line every 10 s (none with --json)."""
    tty = sys.stderr.isatty()
    if quiet and not tty:
        return None
    last = [time.monotonic()]

    def show(report) -> None:
        text = (f"migrate-beaker: {report.seen} seen, {report.migrated + report.updated} written, "
                f"{report.refused_count} refused")
        if tty:
            sys.stderr.write(f"\r{text}")
            sys.stderr.flush()
        elif time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            sys.stderr.write(text + "\n")

    return show


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchrun import run  # imported here: the runner is only for source checkouts

    if args.out is not None:
        _writable_dir(args.out, "--out")  # before minutes of benchmarks, not after
    return run(quick=args.quick, as_json=args.json, out=args.out, select=args.select)


class CommandParser(argparse.ArgumentParser):
    """argparse, reporting bad arguments as every other bad input is reported: one `fastsess: ...` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fastsess: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="fastsess", description="Fast, safe, Beaker-compatible WSGI sessions.")
    parser.add_argument("--version", action="version", version=f"fastsess {__version__} ({core.IMPLEMENTATION} kernel)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="serve the demo site on the LMDB store")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port_number, default=8000, help="0 picks a free port (default 8000)")
    demo.add_argument("--data-dir", default=None, help="where the demo keeps sessions (default: a temp dir)")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("gen-secret", help="print a new random secret for session.secret")
    gen.add_argument("--bytes", type=_secret_bytes, default=48,
                     help=f"random bytes, {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} (default 48)")
    gen.set_defaults(func=cmd_gen_secret)

    bench = sub.add_parser(
        "bench", help="per-request benchmarks against Beaker, Flask and Django (needs a source checkout)"
    )
    bench.add_argument("--quick", action="store_true", help="short rounds, 300-byte payload only (under a minute)")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--out", metavar="DIR", help="where to write bench.json, bench.txt, bench.png "
                       "(default: bench/results)")
    bench.add_argument("-k", dest="select", metavar="EXPR", help='select benchmarks, as pytest -k: "lmdb and read"')
    bench.set_defaults(func=cmd_bench)

    for name, func, text in (
        ("cleanup", cmd_cleanup, "remove expired sessions from the configured store"),
        ("inspect", cmd_inspect, "verify and decode a session cookie"),
        ("create-table", cmd_create_table, "create the sql store's table (for apps without DDL rights)"),
        ("migrate-beaker", cmd_migrate_beaker, "copy Beaker's stored sessions into the configured store"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="INI file with session.* keys (or FASTSESS_CONFIG)")
        p.add_argument("--section", default="app:main")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        if name == "cleanup":
            p.add_argument("--batch", type=_positive_int, default=1000,
                           help="records removed per step (default 1000)")
        elif name == "inspect":
            p.add_argument("cookie", help="the cookie value (or name=value)")
        elif name == "migrate-beaker":
            p.description = "Copy Beaker's stored sessions into the configured fastsess store."
            p.epilog = MIGRATE_EPILOG
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            _migrate_arguments(p)
    return parser


MIGRATE_EPILOG = """\
Beaker stores (--from-type, and where it is):
  file              --from-data-dir DIR: Beaker's session.data_dir
  ext:redis         --from-url redis://host:6379/0: Beaker's session.url
  ext:rediscluster  --from-url redis://h1:7000,redis://h2:7001: Beaker's session.urls;
                    every primary node is scanned
  ext:database      --from-url SQLALCHEMY_URL [--from-table beaker_cache] [--from-schema S]
  ext:sqla          --from-url: the URL of the engine given as session.bind, and
                    --from-table/--from-schema: the table given as session.table
  ext:memcached     --from-url "h1:11211;h2:11211": Beaker's session.url. Keys are listed
                    with `lru_crawler metadump all` (memcached 1.4.31 or later, crawler
                    on); sessions memcached evicted or lost in a restart are gone.

Run a bulk pass before the switch, then the same command again at cutover: it
is a delta pass over what changed since (file, ext:database and ext:sqla by
their modification time, ext:memcached by last access; the Redis stores are
read again whole and filtered by Beaker's _accessed_time). Pickles are read by a
restricted unpickler: anything but plain data is refused and reported, never run.
"""


def _migrate_arguments(p: argparse.ArgumentParser) -> None:
    from .migrate import SOURCE_TYPES

    p.add_argument("--from-type", required=True, choices=SOURCE_TYPES, help="Beaker's session.type")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-data-dir", metavar="DIR", help="Beaker's session.data_dir (file)")
    source.add_argument("--from-url", "--from-urls", metavar="URL", dest="from_url",
                        help="Beaker's session.url, or session.urls for ext:rediscluster")
    p.add_argument("--from-table", default="beaker_cache", metavar="TABLE", help="Beaker's table_name, or the name of the "
                   "table given as session.table (ext:database, ext:sqla)")
    p.add_argument("--from-schema", metavar="SCHEMA", help="Beaker's schema_name, or the table's schema "
                   "(ext:database, ext:sqla)")
    p.add_argument("--since", metavar="TIME", help="delta pass: sessions changed since a Unix time or an "
                   "ISO 8601 date-time (default: the start of the last pass, from the state file)")
    p.add_argument("--full", action="store_true", help="a bulk pass, whatever the state file says (it also copies sessions fastsess has ended: before cutover only)")
    p.add_argument("--state", metavar="FILE", help="where passes are remembered (default: "
                   ".fastsess-migrate-beaker.json next to the config file)")
    p.add_argument("--dry-run", action="store_true", help="read and check the Beaker side, write nothing")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FastsessError as exc:
        print(f"fastsess: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in a long cleanup or migration: a line, not a traceback
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # past a progress line
        print("fastsess: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
