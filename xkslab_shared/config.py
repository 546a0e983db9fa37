"""Settings: one frozen, typed object built once from a data directory's TOML file, ``XKSLAB_*``
environment variables and command-line flags, in that order of precedence.

Every setting has a dotted name (``seal.backend``); its environment variable is ``XKSLAB_`` plus the
name upper-cased with dots as underscores (``XKSLAB_SEAL_BACKEND``); a flag override uses the dotted name.
Validation happens here, once, so a bad value stops start-up with an error that names the setting and
where it came from, instead of failing later inside a service.

This module is long because the settings, their conversion and their cross-checks are one concern:
split, a reader would look for a setting's type, default and limits in three places.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from xkslab_shared.link_frames import parse_link_url

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CONFIG_FILE_NAME = "xkslab.toml"
ENV_PREFIX = "XKSLAB_"
DEFAULT_DATA_DIR = Path(".xkslab")


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names it and its source."""


@dataclass(frozen=True)
class DatabaseSettings:
    # Empty means the embedded default: a SQLite file in the data directory.
    url: str = field(default="", repr=False)  # may carry a password
    busy_timeout_ms: int = 5000
    pool_size: int = 10
    # The services' request paths cache what they read (keys, app credentials, permissions, key stores):
    # a change made by another process is honoured within cache_poll_ms (0: the database's change counter
    # is read on every request), and no entry, unsealed key material included, is kept longer than
    # cache_max_age_s (0: no caching).
    cache_poll_ms: int = 100
    cache_max_age_s: int = 30
    # SQLite: the key manager's connections never checkpoint the WAL on commit (a checkpoint there put
    # a database write and fsync on the request path); a background thread checkpoints every this often
    # instead (0: SQLite's own checkpoint at commit, every 1000 pages).
    wal_checkpoint_ms: int = 1000
    # SQLite: when the WAL still holds more than this many frames (pages) after a background checkpoint,
    # a RESTART checkpoint follows at once so that the WAL starts again from its beginning (under a
    # steady load PASSIVE rounds alone never let it, and it grew without bound); 0: PASSIVE only.
    wal_restart_frames: int = 1000


@dataclass(frozen=True)
class Pkcs11Settings:
    library: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    token_label: str = "xkslab"
    key_label: str = "xkslab-seal"
    pin: str = field(default="", repr=False)


@dataclass(frozen=True)
class SealSettings:
    backend: Literal["software", "pkcs11"] = "software"
    key_file: Path = Path("seal.key")
    # When set, the software sealing key comes from this passphrase through scrypt instead of key_file.
    passphrase: str = field(default="", repr=False)
    salt_file: Path = Path("seal.salt")
    pkcs11: Pkcs11Settings = field(default_factory=Pkcs11Settings)


@dataclass(frozen=True)
class AuditSettings:
    # One hash chain per DSM node, so replicas sharing a database never contend for a chain head.
    node_id: str = "dsm-1"
    batch_max: int = 512
    # How long the writer waits for more rows after a batch's first before committing it. 0: it does not
    # wait; an idle writer commits a lone row at once, and rows arriving during a commit are the next
    # batch (a timer added its whole length to every lone request's latency). README: Performance.
    flush_interval_ms: float = 0.0
    # How batches of audit rows without a mutation (every XKS call's) reach the database: "raw" through
    # the driver (SQLite: a thread and a sqlite3 connection of the writer's own; PostgreSQL: an asyncpg
    # connection of its own), "orm" through SQLAlchemy's session, as before. README: Performance.
    writer: Literal["orm", "raw"] = "raw"


@dataclass(frozen=True)
class FleetSettings:
    # Each serving process (a DSM node, a proxy) keeps a row in fleet_nodes and renews its heartbeat this
    # often; a node whose heartbeat is older than node_timeout_s is not live (health, `/sys/v1/nodes`).
    heartbeat_s: float = 2.0
    node_timeout_s: float = 10.0


@dataclass(frozen=True)
class DsmSettings:
    host: str = "127.0.0.1"
    port: int = 8500
    session_ttl_s: int = 3600
    # A session's absolute lifetime from its login: reauth renews a token only up to this point.
    session_max_lifetime_s: int = 28800
    # How stale this process's cache of terminated sessions may be (0: read the database on every call).
    revocation_refresh_ms: int = 500
    max_body_bytes: int = 1 << 20
    # HTTPS is served too when both files exist (relative paths are in the data directory).
    https_port: int = 8443
    tls_cert: Path = Path("tls/dsm.crt")
    tls_key: Path = Path("tls/dsm.key")
    # The token XKS proxies present on the DSM's internal XKS endpoint (created on first start, 0600).
    proxy_token_file: Path = Path("proxy.token")
    # The framed link XKS proxies on this machine or a trusted network call instead of the HTTP endpoint:
    # a Unix socket path (relative to the data directory, made 0600), tcp:HOST:PORT (no TLS), or empty
    # for none. `up` points its proxy at it (xks.dsm_urls link+unix://...).
    link: str = "run/dsm-link.sock"
    # How long a deep health check (a real encrypt and decrypt) may be reused; the XKS spec allows 60 s.
    health_cache_s: int = 10
    # Failed logins per identity (app id or email) and client address within a window; past them,
    # 429 before any hashing, and one summary audit row per burst instead of one row per failure.
    login_max_failures: int = 5
    login_window_s: float = 60.0
    # Failed logins from one client address within a window over all identities; past them, every login
    # from it gets 429 before any look-up or hashing (0: no limit per address).
    login_max_failures_per_source: int = 50
    # Password hashes per window over all client addresses for logins not known to be good (an unknown
    # email, an identity that failed in the window); past them such a login gets 429 before hashing, so
    # a spray from many addresses never queues ahead of a good login (0: no global budget).
    login_max_failing_hashes: int = 100
    # How long an approval request may wait for its quorum and then for its result fetch (Fortanix's
    # default is not documented; a day keeps a forgotten request from running much later).
    approval_expiry_s: float = 86400.0


@dataclass(frozen=True)
class HttpSettings:
    """Limits of every service's HTTP server (DSM, XKS proxy, KMS), so slow clients cannot hold them."""

    # Open connections per server (HTTP and HTTPS together); past it a new one gets 503 and is closed.
    max_connections: int = 1000
    # From the start of a handler to the last byte of its request body; past it: 408 and close.
    body_timeout_ms: int = 10_000
    # An idle connection (none sent yet, or between requests) is closed after this.
    keepalive_timeout_s: float = 15.0
    # Open connections from one client address; past it that client's new ones get 503, so one client's
    # idle sockets cannot take every slot. Above the XKS proxy's pool to the DSM (256 connections).
    max_connections_per_client: int = 300
    # Listen with SO_REUSEPORT, so several processes share one port and the kernel spreads connections
    # over them (`serve --workers N` sets it on each worker; every process on the port must set it).
    reuse_port: bool = False


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


@dataclass(frozen=True)
class LogSettings:
    """What each service writes to stderr (a detached lab's to run/<service>.log)."""

    level: LogLevel = "info"
    format: LogFormat = "text"
    # One line per request per service (method, route template, status, duration, kmsRequestId); off, a
    # service logs only its start, stop, warnings and errors.
    access: bool = True


@dataclass(frozen=True)
class XksSettings:
    host: str = "127.0.0.1"
    port: int = 8600
    # HTTPS is served too when both files exist (relative paths are in the data directory).
    https_port: int = 8643
    tls_cert: Path = Path("tls/xks.crt")
    tls_key: Path = Path("tls/xks.key")
    # mTLS: when set, HTTPS clients must present a certificate chaining to this CA ...
    client_ca: str = ""
    # ... whose subject CN or a DNS SAN equals this name (empty: any certificate from client_ca).
    client_subject: str = ""
    # mTLS as KMS does it: client_ca defaults to the lab CA (tls/ca.crt) and client_subject to the name
    # KMS presents, cks.kms.<kms.region>.amazonaws.com (`xkslab up --mtls`).
    mtls: bool = False
    # The key manager: comma-separated base URLs, one per DSM node (health reports each one): http:// or
    # https:// (the internal HTTP endpoint), or link+unix:///path and link://HOST:PORT (the framed link).
    dsm_urls: str = "http://127.0.0.1:8500"
    # Persistent connections per link node, each carrying many calls at once.
    dsm_link_connections: int = 2
    dsm_token_file: Path = Path("proxy.token")
    # CA bundle for https:// DSM URLs (empty: the system's trust store).
    dsm_ca: str = ""
    # Below KMS's own 250 ms budget, so a slow DSM becomes DependencyTimeoutException, not a KMS timeout.
    dsm_timeout_ms: int = 200
    # Sizes past these answer 501 UnsupportedOperationException; they may not be below the spec minimums.
    max_plaintext_bytes: int = 4300
    max_aad_bytes: int = 8192
    # Secondary authorization rules on requestMetadata (empty: every authenticated request is allowed).
    policy_file: str = ""
    # How long the proxy trusts its list of URI path prefixes before asking the DSM again.
    prefix_cache_s: float = 5.0
    # Per URI path prefix request quota (requests per second, 0: none) and its burst; past it: 429.
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 100
    # The bearer token of the fault-injection admin endpoint (created on first start, 0600).
    admin_token_file: Path = Path("xks-admin.token")
    # This proxy's name in the fleet's node registry (fleet_nodes); each proxy of a fleet its own.
    node_id: str = "xks-1"

    @property
    def dsm_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.dsm_urls.split(",") if u.strip()]


@dataclass(frozen=True)
class KmsSettings:
    host: str = "127.0.0.1"
    port: int = 8700
    region: str = "us-east-1"
    account_id: str = "111122223333"
    # Seals each KMS key's backing key (the inner envelope layer): 32 random bytes, 0600.
    seal_key_file: Path = Path("kms-seal.key")
    # CA bundle KMS trusts for https:// XKS proxy endpoints (empty: tls/ca.crt when it exists, else the
    # system store), as real KMS trusts the public CAs.
    xks_ca: str = ""
    # The client certificate KMS presents to every https:// proxy (mTLS), when both files exist; `xkslab
    # certs` and `xkslab up` make it for cks.kms.<region>.amazonaws.com. Reread when the files change.
    xks_client_cert: Path = Path("tls/kms-client.crt")
    xks_client_key: Path = Path("tls/kms-client.key")
    # KMS gives an XKS proxy 250 ms per call (connect, TLS handshake and answer).
    xks_timeout_ms: int = 250
    # Consecutive store-level proxy failures (data calls and health checks) that turn a CONNECTED key
    # store FAILED with the last failure's ConnectionErrorCode; 0: never (a store fails only on Connect).
    xks_failure_threshold: int = 0
    # Seconds between KmsHealthCheck calls to each CONNECTED store's proxy (KMS: every few minutes); 0: none.
    xks_health_check_s: float = 0.0
    # Apply AWS's own patterns to XksProxyUriEndpoint (https://, no port); off so loopback proxies work.
    strict_endpoints: bool = False
    # Check callers' SigV4 signatures against the access keys of `xkslab kms access-key create` (off, as
    # in moto: any credentials work and the access key id only names the caller).
    verify_sigv4: bool = False
    # AWS's quota on cryptographic operations with the keys of one external key store (requests per
    # second, a token bucket per store and process); past it, ThrottlingException. 0: no quota.
    xks_store_rps: int = 1800


def kms_client_subject(region: str) -> str:
    """The name KMS presents to XKS proxies in a region (spec 1.10): ``cks.kms.<region>.amazonaws.com``."""
    return f"cks.kms.{region}.amazonaws.com"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    seal: SealSettings = field(default_factory=SealSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    dsm: DsmSettings = field(default_factory=DsmSettings)
    xks: XksSettings = field(default_factory=XksSettings)
    kms: KmsSettings = field(default_factory=KmsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{(self.data_dir / 'xkslab.db').resolve()}"

    def path(self, relative: Path) -> Path:
        """Resolve a path setting against the data directory."""
        return relative if relative.is_absolute() else self.data_dir / relative

    def xks_client_ca(self) -> Path | None:
        """The CA the proxy requires client certificates from: xks.client_ca, else the lab CA with
        xks.mtls, else None (no mTLS)."""
        if self.xks.client_ca:
            return self.path(Path(self.xks.client_ca))
        return self.data_dir / "tls" / "ca.crt" if self.xks.mtls else None

    def xks_client_subject(self) -> str:
        """The subject the proxy accepts: xks.client_subject, else KMS's own name with xks.mtls."""
        if self.xks.client_subject or not self.xks.mtls:
            return self.xks.client_subject
        return kms_client_subject(self.kms.region)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked, for printing and logs."""
        return _redact(_as_plain(self))


_SECRET_NAMES = frozenset({"pin", "passphrase"})


def _as_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _as_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _redact(tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _redact(value)
        elif key in _SECRET_NAMES:
            out[key] = "***" if value else ""
        else:
            out[key] = value
    if "url" in out and isinstance(out["url"], str):
        out["url"] = _redact_url(out["url"])
    return out


def _redact_url(url: str) -> str:
    # postgresql+asyncpg://user:secret@host/db -> postgresql+asyncpg://user:***@host/db
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}{at}{host}"


# ---------------------------------------------------------------------------------------------- loading


def _leaf_specs(cls: type, prefix: str = "") -> dict[str, type]:
    """Dotted name -> annotated type for every leaf setting of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    specs: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            specs.update(_leaf_specs(hint, f"{name}."))  # type: ignore[arg-type]
        else:
            specs[name] = hint
    return specs


LEAF_SPECS: dict[str, type] = _leaf_specs(Settings)


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper().replace(".", "_")


def _flatten(tree: Mapping[str, Any], prefix: str, source: str) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}.", source))
        else:
            flat[name] = (value, source)
    return flat


def _convert(name: str, hint: Any, raw: Any, source: str) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"setting {name} ({source}): {why}")

    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise fail(f"must be one of {', '.join(map(str, choices))}, not {raw!r}")
        return raw
    converters: dict[Any, Callable[[Any], Any]] = {
        str: _to_str,
        int: _to_int,
        float: _to_float,
        bool: _to_bool,
        Path: lambda v: Path(_to_str(v)),
    }
    if isinstance(hint, types.UnionType) or hint not in converters:
        raise fail(f"unsupported type {hint!r}")  # a programming error, caught by tests
    try:
        return converters[hint](raw)
    except (TypeError, ValueError) as exc:
        raise fail(str(exc)) from None


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {v!r}") from None
    raise TypeError(f"expected an integer, got {type(v).__name__}")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {v!r}") from None
    raise TypeError(f"expected a number, got {type(v).__name__}")


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return v.strip().lower() in {"1", "true", "yes", "on"}
    raise ValueError(f"expected true or false, got {v!r}")


_POSITIVE = {
    "database.busy_timeout_ms",
    "database.pool_size",
    "audit.batch_max",
    "dsm.session_ttl_s",
    "dsm.session_max_lifetime_s",
    "dsm.max_body_bytes",
    "xks.dsm_timeout_ms",
    "xks.dsm_link_connections",
    "kms.xks_timeout_ms",
    "dsm.login_max_failures",
    "dsm.login_window_s",
    "dsm.approval_expiry_s",
    "http.max_connections",
    "http.body_timeout_ms",
    "http.keepalive_timeout_s",
    "http.max_connections_per_client",
    "fleet.heartbeat_s",
    "fleet.node_timeout_s",
}
# Every port setting (each accepts 0: a free port from the system; `--free-ports` sets them all to 0).
PORT_SETTINGS = ("dsm.port", "dsm.https_port", "xks.port", "xks.https_port", "kms.port")
# The XKS spec's minimums: a proxy must accept at least this much (xks-proxy-api.md 1.5).
XKS_MIN_PLAINTEXT_BYTES = 4300
XKS_MIN_AAD_BYTES = 8192
# The proxy forwards the body Base64-encoded inside JSON (about 16/9 of the payload); this cap keeps the
# largest call under the DSM's default 1 MiB body limit.
XKS_MAX_PLAINTEXT_CAP = 262144


def _check(values: dict[str, Any], sources: dict[str, str]) -> None:
    def fail(name: str, why: str) -> ConfigError:
        return ConfigError(f"setting {name} ({sources.get(name, 'default')}): {why}")

    for name in _POSITIVE:
        if values[name] <= 0:
            raise fail(name, "must be greater than 0")
    if values["audit.flush_interval_ms"] < 0:
        raise fail("audit.flush_interval_ms", "must not be negative")
    if values["dsm.revocation_refresh_ms"] < 0:
        raise fail("dsm.revocation_refresh_ms", "must not be negative (0 reads the database every call)")
    for name in PORT_SETTINGS:
        if not 0 <= values[name] < 65536:
            raise fail(name, "must be a TCP port (1-65535), or 0 for a free one")
    if not 0 <= values["dsm.health_cache_s"] <= 60:
        raise fail("dsm.health_cache_s", "must be 0 to 60 seconds (the XKS spec's limit)")
    if not 0 <= values["dsm.login_max_failures_per_source"] <= 1_000_000:
        raise fail("dsm.login_max_failures_per_source", "must be 0 (no limit) to 1000000")
    if not 0 <= values["dsm.login_max_failing_hashes"] <= 1_000_000:
        raise fail("dsm.login_max_failing_hashes", "must be 0 (no limit) to 1000000")
    if not 0 <= values["database.cache_poll_ms"] <= 10_000:
        raise fail("database.cache_poll_ms", "must be 0 to 10000 milliseconds")
    if not 0 <= values["database.wal_checkpoint_ms"] <= 60_000:
        raise fail("database.wal_checkpoint_ms", "must be 0 (checkpoint at commit) to 60000 milliseconds")
    if not 0 <= values["database.wal_restart_frames"] <= 1_000_000:
        raise fail("database.wal_restart_frames", "must be 0 (never restart the WAL) to 1000000 frames")
    if not 0 <= values["database.cache_max_age_s"] <= 3600:
        raise fail("database.cache_max_age_s", "must be 0 to 3600 seconds")
    if not XKS_MIN_PLAINTEXT_BYTES <= values["xks.max_plaintext_bytes"] <= XKS_MAX_PLAINTEXT_CAP:
        raise fail(
            "xks.max_plaintext_bytes",
            f"must be {XKS_MIN_PLAINTEXT_BYTES} (the spec's minimum) to {XKS_MAX_PLAINTEXT_CAP}",
        )
    if not XKS_MIN_AAD_BYTES <= values["xks.max_aad_bytes"] <= 65535:
        raise fail("xks.max_aad_bytes", f"must be {XKS_MIN_AAD_BYTES} to 65535 (the AAD length is a uint16)")
    if values["xks.rate_limit_rps"] < 0:
        raise fail("xks.rate_limit_rps", "must not be negative (0 turns the quota off)")
    if values["xks.rate_limit_burst"] < 1:
        raise fail("xks.rate_limit_burst", "must be at least 1")
    if values["xks.prefix_cache_s"] < 0:
        raise fail("xks.prefix_cache_s", "must not be negative")
    if values["kms.xks_failure_threshold"] < 0:
        raise fail("kms.xks_failure_threshold", "must not be negative (0: repeated failures change no state)")
    if values["kms.xks_health_check_s"] < 0:
        raise fail("kms.xks_health_check_s", "must not be negative (0: no periodic health check)")
    if not (len(values["kms.account_id"]) == 12 and values["kms.account_id"].isdigit()):
        raise fail("kms.account_id", "must be 12 digits")
    if not values["kms.region"] or not all(c.isalnum() or c == "-" for c in values["kms.region"]):
        raise fail("kms.region", "must be a region name such as us-east-1")
    urls = [u.strip() for u in values["xks.dsm_urls"].split(",") if u.strip()]
    schemes = ("http://", "https://", "link://", "link+unix://")
    if not urls or len(urls) > 10 or not all(u.startswith(schemes) for u in urls):
        raise fail(
            "xks.dsm_urls", "must be 1 to 10 comma-separated http://, https://, link:// or link+unix:// URLs"
        )
    for url in urls:
        try:
            parse_link_url(url)
        except ValueError as exc:
            raise fail("xks.dsm_urls", str(exc)) from None
    if values["xks.dsm_link_connections"] > 64:
        raise fail("xks.dsm_link_connections", "must be 1 to 64")
    link = values["dsm.link"].strip()
    if link.startswith("tcp:"):
        host, _, port = link[4:].rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise fail("dsm.link", "tcp:HOST:PORT needs a host and a port (0: a free one)")
    for name in ("audit.node_id", "xks.node_id"):
        if not values[name] or len(values[name]) > 64:
            raise fail(name, "must be 1 to 64 characters")
    if values["fleet.node_timeout_s"] <= values["fleet.heartbeat_s"]:
        raise fail("fleet.node_timeout_s", "must be longer than fleet.heartbeat_s")
    url = values["database.url"]
    if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise fail("database.url", "must start with sqlite+aiosqlite:// or postgresql+asyncpg://")


def load_settings(
    data_dir: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < ``<data_dir>/xkslab.toml`` < ``XKSLAB_*`` < ``overrides`` (flags).

    ``data_dir`` itself comes from the flag, else ``XKSLAB_DATA_DIR``, else ``./.xkslab``.
    """
    env = os.environ if environ is None else environ
    resolved_dir = (
        Path(data_dir) if data_dir is not None else Path(env.get("XKSLAB_DATA_DIR", DEFAULT_DATA_DIR))
    )
    raw: dict[str, tuple[Any, str]] = {}
    config_file = resolved_dir / CONFIG_FILE_NAME
    if config_file.exists():
        try:
            with config_file.open("rb") as fh:
                tree = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
        for name, entry in _flatten(tree, "", str(config_file)).items():
            if name not in LEAF_SPECS or name == "data_dir":
                raise ConfigError(f"{config_file}: unknown setting {name}")
            raw[name] = entry
    for name in LEAF_SPECS:
        var = env_var(name)
        if name != "data_dir" and var in env:
            raw[name] = (env[var], f"environment {var}")
    for name, value in (overrides or {}).items():
        if name not in LEAF_SPECS or name == "data_dir":
            raise ConfigError(f"unknown setting {name}")
        if value is not None:
            raw[name] = (value, "command line")

    values = {name: _default(name) for name in LEAF_SPECS}
    sources: dict[str, str] = {}
    for name, (value, source) in raw.items():
        values[name] = _convert(name, LEAF_SPECS[name], value, source)
        sources[name] = source
    values["data_dir"] = resolved_dir
    _check(values, sources)
    return _build(Settings, values, "")


def _default(name: str) -> Any:
    obj: Any = Settings()
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


_D = TypeVar("_D", bound="DataclassInstance")


def _build(cls: type[_D], values: dict[str, Any], prefix: str) -> _D:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        nested = isinstance(hint, type) and dataclasses.is_dataclass(hint)
        kwargs[f.name] = _build(hint, values, f"{name}.") if nested else values[name]
    return cls(**kwargs)


def render_toml(values: Mapping[str, Any]) -> str:
    """A small TOML writer for the config file ``xkslab init`` writes (flat dotted names -> sections)."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        sections.setdefault(section, {})[key] = value
    lines: list[str] = []
    for section in sorted(sections):
        if section:
            lines.append(f"\n[{section}]")
        for key, value in sections[section].items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
