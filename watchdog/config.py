"""The one configuration schema: every key typed, described, with an example and a default.

The commented example config and the README's reference are generated from these models
(``watchdog/config_example.py``, ``bup-watchdog config example``), so docs and code cannot drift
apart. ``watchdog/config_load.py`` reads a file against them and reports every problem at once
as ``At 'dotted.key': message`` under the file's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    # inf and nan (TOML has both) pass every ge= bound and crash later: refused here
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


_CQL_NAME = r"^[a-z][a-z0-9_]{0,47}$"
WEEK = 7 * 86400.0  # the bound of the schedule's and the guard's durations (timedelta-safe)


class CassandraConfig(Section):
    """The Cassandra inventory ([inventory.cassandra]): the fleet's own database, read-only
    except for `bup-watchdog inventory load`."""

    hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")]] = Field(
        ["127.0.0.1"],
        min_length=1,
        description="Contact points (addresses or host names); the driver finds the other nodes.",
        examples=[["10.1.1.10", "10.1.2.10"]],
    )
    port: int = Field(9042, ge=1, le=65535, description="CQL native transport port.")
    keyspace: str = Field(
        "salvus",
        pattern=_CQL_NAME,
        description="Keyspace holding storage_servers, storage_topology and projects.",
    )
    local_dc: str | None = Field(
        None,
        description="The data centre whose nodes are asked first (and the only ones for LOCAL_* "
        "consistency levels). Empty = the data centre of the first contact point.",
        examples=["dc0"],
    )
    consistency: Literal[
        "one", "two", "three", "quorum", "all", "local_quorum", "each_quorum", "local_one"
    ] = Field(
        "local_quorum",
        description="Consistency level of every read (and of `inventory load`'s writes).",
    )
    username: str | None = Field(
        None,
        description="Login for PasswordAuthenticator; needs password_file. Empty = no login.",
        examples=["bupwatch"],
    )
    password_file: Path | None = Field(
        None,
        description="File holding the password (first line). Absolute, or relative to this config.",
        examples=["/etc/bup-watchdog/cassandra-password"],
    )
    ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) to verify the nodes' certificates: setting it turns on TLS. "
        "Absolute, or relative to this config.",
        examples=["/etc/bup-watchdog/cassandra-ca.pem"],
    )
    cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM) for nodes that require one (needs ca_file).",
        examples=["/etc/bup-watchdog/cassandra-client.pem"],
    )
    key_file: Path | None = Field(
        None,
        description="Private key (PEM) of cert_file.",
        examples=["/etc/bup-watchdog/cassandra-client.key"],
    )
    check_hostname: bool = Field(
        True, description="With TLS, the node's certificate must name the address connected to."
    )
    connect_timeout: float = Field(
        5.0, gt=0, le=120, description="Seconds allowed to open a connection to a node."
    )
    request_timeout: float = Field(
        15.0, gt=0, le=600, description="Seconds allowed for one request (one page of rows)."
    )
    protocol_version: int | None = Field(
        None,
        ge=1,
        le=6,
        description="CQL native protocol version. Empty = negotiated with the cluster (the driver "
        "logs a warning for each version it steps down from).",
        examples=[5],
    )
    fetch_size: int = Field(
        5000,
        ge=100,
        le=100_000,
        description="Rows per page when reading projects: the whole table is streamed page by "
        "page, never asked for at once.",
    )
    read_ranges: int = Field(
        4,
        ge=1,
        le=64,
        description="Token ranges of the projects table read at once, each page by page, the rows "
        "handed on in the table's own order (Murmur3Partitioner only: other partitioners are read "
        "in one scan). 1 = one scan. At most read_ranges × 3 pages are held at a time.",
    )

    @model_validator(mode="after")
    def _pairs(self) -> CassandraConfig:
        if self.username and self.password_file is None:
            raise ValueError("username needs password_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("cert_file needs ca_file (TLS)")
        return self


class InventoryConfig(Section):
    source: Literal["file", "cassandra"] = Field(
        "file",
        description="Where servers and projects come from: a TOML/JSON file or Cassandra.",
        examples=["file"],
    )
    file: Path | None = Field(
        None,
        description="Inventory file (TOML or JSON) when source = 'file'. Relative to this config.",
        examples=["inventory.toml"],
    )
    cassandra: CassandraConfig = Field(
        default_factory=CassandraConfig,  # type: ignore[arg-type]
        description="Connection to Cassandra when source = 'cassandra' (and for `bup-watchdog "
        "inventory load`).",
    )


class SshConfig(Section):
    known_hosts: Path | None = Field(
        None,
        description="known_hosts file every host key is checked against (strict: an unknown or "
        "changed key is a security finding, never accepted). Empty = ~/.ssh/known_hosts.",
        examples=["/etc/bup-watchdog/known_hosts"],
    )
    key_file: Path | None = Field(
        None,
        description="Private key used to log in to the storage hosts. Empty = the SSH agent or "
        "~/.ssh/id_* keys.",
        examples=["/etc/bup-watchdog/id_ed25519"],
    )
    config_file: Path | None = Field(
        None,
        description="An OpenSSH client config (ssh_config) to reach hosts as 'ssh HOST' would, "
        "HOST being the server's ssh_host: HostName, Port, User, IdentityFile and ProxyJump "
        "(bastions) of its Host blocks. What the file sets for a host wins over the "
        "inventory's ssh_port and ssh_user and over user and key_file here, which apply where "
        "it is silent. Host keys, the jump hosts' too, are still checked strictly against "
        "known_hosts; ProxyCommand, Match exec and Include are refused. Empty = not used.",
        examples=["/etc/bup-watchdog/ssh_config"],
    )
    user: str = Field(
        "bupwatch",
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Default login user (a server entry may override it): a dedicated user whose "
        "key runs only bupwatch-ssh-gate on the hosts (README, Security defaults). The probe "
        "and deep checks run as this user; repairs through sudo unless it is root.",
    )
    sudo: bool | None = Field(
        None,
        description="Run the repairs' commands as 'sudo -n COMMAND' (the gate then runs them as "
        "root through deploy/sudoers.bupwatch). Empty = yes unless the login user is root. The "
        "probe and deep checks never use sudo.",
        examples=[True],
    )
    connect_timeout: float = Field(
        3.0, gt=0, le=120, description="Seconds allowed for the TCP connect to sshd."
    )
    banner_timeout: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Seconds allowed for sshd's banner (a frozen sshd hangs here).",
    )
    auth_timeout: float = Field(
        5.0, gt=0, le=120, description="Seconds allowed for authentication."
    )
    command_timeout: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Seconds one command (e.g. the probe of a whole host) may run, and the longest "
        "silence allowed on its channel.",
    )
    max_output_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Cap on what one command may print; beyond it the command is cut off and the "
        "host reported as answering garbage.",
    )
    parallel_hosts: int = Field(
        8, ge=1, le=256, description="How many hosts are gathered at the same time."
    )
    python: str = Field(
        "python3",
        pattern=r"^[A-Za-z0-9_./-]+$",
        description="Python interpreter on the storage hosts that runs the probe.",
    )


class StateConfig(Section):
    directory: Path = Field(
        Path("state"),
        description="Directory for the SQLite state, inventory cache and journal. Relative to "
        "this config.",
        examples=["/var/lib/bup-watchdog"],
    )
    keep_history_days: float = Field(
        400.0,
        ge=0,
        le=36500,
        description="Sweeps, resolved findings and finished journal rows older than this leave "
        "the state (once a day, after a sweep); open findings, pending or running repairs and "
        "unacknowledged interrupted ones stay. 0 keeps everything; otherwise at least 7 and at "
        "least guard.failure_window_hours (the guard reads that much of the journal). Reports "
        "reach this far back.",
    )

    @model_validator(mode="after")
    def _a_week_at_least(self) -> StateConfig:
        if 0 < self.keep_history_days < 7:
            raise ValueError("keep_history_days must be 0 (keep everything) or at least 7")
        return self


class DeepConfig(Section):
    """Deep integrity checks (git fsck --connectivity-only + bup ls master) on a rolling budget."""

    enabled: bool = Field(True, description="Run deep checks during sweeps that ask for them.")
    window_days: float = Field(
        7.0, gt=0, description="Every repository is deep-checked at least once in this window."
    )
    per_host: int = Field(
        50,
        ge=0,
        description="Repositories deep-checked per host per deep pass, least recently checked "
        "first (a process per repository: ~30-60 ms each); more when this many could not cover "
        "the host's repositories within window_days (1.2 x its share of them per pass). 0: "
        "only the changed and wrong-looking ones.",
    )
    changed_per_host: int = Field(
        50,
        ge=0,
        description="Extra deep checks per host per pass for repositories whose master changed "
        "or whose cheap facts look wrong.",
    )
    command_timeout: float = Field(
        120.0, gt=0, description="Seconds one git fsck or bup ls may take on one repository."
    )


class IncrementalConfig(Section):
    """Incremental sweeps in the daemon: unchanged repositories are not walked again."""

    enabled: bool = Field(
        True,
        description="Keep each repository's last facts in memory and let the hosts skip the walk "
        "of unchanged ones (20 lstat calls instead of a full walk). One-shot commands (check, "
        "run --once, audit --fresh) always walk everything.",
    )
    full_walk_seconds: float = Field(
        21600.0,
        ge=60,
        description="Every repository is still walked in full at least this often (each one "
        "between half and all of it, so the full walks spread out): what a fingerprint cannot "
        "see (an .idx rewritten in place, entries in hooks/ or info/) is late by at most this.",
    )


class ScheduleConfig(Section):
    """When the daemon (bup-watchdog run) sweeps."""

    sweep_interval_seconds: float = Field(
        300.0,
        ge=5,
        le=WEEK,
        description="A sweep (one gather per host, the due checks) this often (at most a week).",
    )
    jitter_seconds: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="Random delay added to each sweep so watchdogs do not align (at most 1 h).",
    )
    deep_interval_seconds: float = Field(
        3600.0, ge=0, description="Sweeps include a deep-check pass at most this often."
    )
    auto_repair: bool = Field(
        True,
        description="After each sweep, ask the guard to repair what the findings point at "
        "(repairs in 'auto' run, in 'approve' wait for an operator; 'off'/'dry-run' are skipped).",
    )
    repair_cooldown_seconds: float = Field(
        1800.0,
        ge=0,
        description="After a decision on a finding, the schedule asks again only after this.",
    )


class MetricsConfig(Section):
    """What /metrics exports beyond per-host and per-check series."""

    top_projects: int = Field(
        10,
        ge=0,
        le=1000,
        description="Export the N projects with the most open findings with a project_id label "
        "(bounded on purpose: a per-project series for 100k projects would swamp Prometheus).",
    )


class MaintenanceWindow(Section):
    """A weekly window during which no repair runs (operators at work; do not fight them)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], description="Days of the week (UTC)."
    )
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, UTC.")
    end: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$", description="HH:MM, UTC.")


class GuardConfig(Section):
    """The guard every repair passes through."""

    breaker_unreachable_fraction: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Suspend all repairs when more than this share of hosts was unreachable in "
        "the last sweep: the fault is more likely the watchdog's own view (network, DNS).",
    )
    max_per_hour_per_host: int = Field(
        5, ge=0, description="At most this many repairs on one host per hour."
    )
    max_failures: int = Field(
        3,
        ge=1,
        description="After this many failed attempts on one target (within failure_window_hours, "
        "none succeeded since) the guard stops trying and raises a finding.",
    )
    failure_window_hours: float = Field(24.0, gt=0, description="Window for max_failures.")
    stop_wait_seconds: float = Field(
        600.0,
        ge=0,
        le=3600,
        description="At a stop (SIGTERM) the daemon starts no more repairs, drops those queued "
        "(the schedule and Alertmanager ask again) and waits this long for those running; one "
        "still running then is journaled 'interrupted' at the next start. Keep it below "
        "systemd's TimeoutStopSec less a sweep (deploy/: 15 min).",
    )
    lease_seconds: float = Field(
        3600.0,
        gt=0,
        le=WEEK,
        description="A lease on a repair target expires after this (crash safety); while the "
        "repair runs it is renewed every third of it. With leases = 'cassandra' a short value "
        "(60) frees the targets of a watchdog that died mid-repair soon.",
    )
    leases: Literal["local", "cassandra"] = Field(
        "local",
        description="Where repair leases live: 'local' (the state database: one watchdog) or "
        "'cassandra' (lightweight transactions in bupwatch_leases, over [inventory.cassandra]: "
        "several watchdogs on one fleet; run `bup-watchdog inventory migrate` once).",
    )
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list,
        description='Weekly windows with no repairs, e.g. [{days=["sat"], start="02:00", '
        'end="04:00"}].',
    )
    max_parallel_repairs: int = Field(
        4,
        ge=1,
        le=64,
        description="Repairs (and decisions) run at the same time, at most one per host: a "
        "host that hangs holds up only its own repairs.",
    )
    no_progress_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="A repair's step that prints nothing and whose host does not answer for "
        "this long is given up (the repair fails, journaled), whatever its own time limit: a "
        "frozen host is not waited on for the step's full timeout.",
    )
    api_token_file: Path | None = Field(
        None,
        description="File holding the bearer token for the HTTP API's write endpoints and the "
        "Alertmanager webhook. Without it those endpoints answer 403.",
        examples=["/etc/bup-watchdog/api-token"],
    )


class AlertRule(Section):
    """Which repair an Alertmanager alert asks for."""

    alertname: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The alert's name.")
    repair: str = Field(pattern=r"^[a-z_]+$", description="The repair it asks for.")


def _default_alert_rules() -> list[AlertRule]:
    return [
        AlertRule(alertname="BupWatchBupServerDown", repair="restart_bup_server"),
        AlertRule(alertname="BupWatchProjectsNotMounted", repair="fence_host"),
        AlertRule(alertname="BupWatchSaveLogTooLarge", repair="rotate_save_log"),
        AlertRule(alertname="BupWatchWrongOwner", repair="chown_project"),
        AlertRule(alertname="BupWatchReplicaBehind", repair="resync_replica"),
        AlertRule(alertname="BupWatchRepoGarbage", repair="clean_repo"),
    ]


class AlertsConfig(Section):
    """The Alertmanager webhook (POST /alertmanager): which alerts start which repairs."""

    rules: list[AlertRule] = Field(
        default_factory=_default_alert_rules,
        description="alertname -> repair. The alert's server_id label names the server; its "
        "project_id label the project, or else every project with an open finding of the "
        "repair's check on that server.",
    )
    max_alerts_per_payload: int = Field(
        1000, ge=1, description="Larger payloads are refused with 413."
    )
    silence: bool = Field(
        False,
        description="While a repair started by an alert runs, silence that alert in "
        "Alertmanager; expire the silence after verification.",
    )
    alertmanager_url: str = Field(
        "http://127.0.0.1:9093",
        pattern=r"^https?://[^\s]+$",
        description="Alertmanager's base URL, for silences.",
    )
    silence_minutes: float = Field(
        60.0, gt=0, le=WEEK / 60, description="Longest a silence may last (at most a week)."
    )
    cooldown_seconds: float = Field(
        1800.0,
        ge=0,
        description="After the guard decided on an alert's request (refused, dry run, denied, "
        "succeeded, failed, conflict), alerts do not ask for the same repair on the same target "
        "(server, or project on a server) again for this long: Alertmanager re-sends a firing "
        "alert every group_interval/repeat_interval and each re-delivery would add a journal "
        "row. Skipped requests are not journaled; they are counted in "
        'bupwatch_repairs_refused_total{reason="alert_cooldown"}. Requests from the CLI, the API '
        "and the schedule are not held back. 0: no cooldown.",
    )
    transient_cooldown_seconds: float = Field(
        60.0,
        ge=0,
        description="The shorter cooldown after a refusal whose cause clears by itself within "
        "minutes: lease (another repair holds the target), circuit_breaker (too much of the "
        "fleet looked unreachable), duplicate (a repair for the alert was pending or running). "
        "Other refusals (rate_limited, maintenance, precondition, mode_off, gave_up, …) wait "
        "cooldown_seconds: asking again sooner would only be refused again.",
    )


class MembershipConfig(Section):
    """Several watchdogs on one fleet: heartbeats in Cassandra, hosts shared out among them."""

    enabled: bool = Field(
        False,
        description="Heartbeat into bupwatch_members (over [inventory.cassandra]) and sweep only "
        "the hosts rendezvous hashing over the live members gives this watchdog. Needs "
        "guard.leases = 'cassandra'.",
    )
    ttl_seconds: float = Field(
        30.0,
        ge=2,
        le=3600,
        description="A watchdog that has not heartbeaten for this long is gone: its hosts move "
        "to the others at their next sweep.",
    )
    heartbeat_seconds: float = Field(
        10.0,
        gt=0,
        description="Heartbeat this often (well below ttl_seconds: a third or less).",
    )
    member_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$",
        description="This watchdog's name among the members. Empty = host name and process id.",
        examples=["watchdog-dc1"],
    )
    heads_max_age_seconds: float = Field(
        0.0,
        ge=0,
        description="A master's newest save published by another watchdog (bupwatch_heads) is "
        "believed for this long; older, its replicas are unjudged. 0 = three sweep intervals.",
    )

    @model_validator(mode="after")
    def _heartbeat_below_ttl(self) -> MembershipConfig:
        if self.heartbeat_seconds >= self.ttl_seconds:
            raise ValueError("heartbeat_seconds must be below ttl_seconds")
        return self


class HttpConfig(Section):
    listen: str = Field(
        "127.0.0.1:9731",
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="Address and port of the HTTP server (/metrics, /healthz, API).",
    )
    max_connections: int = Field(
        512,
        ge=8,
        le=65536,
        description="Open HTTP connections at most. At the limit a new connection closes the one "
        "that has waited longest without sending a complete request (a slowloris client holds "
        "nothing for long); when every connection has a request in progress the new one gets "
        "503 and is closed. Also capped at the open-file limit minus fd_reserve.",
    )
    max_requests: int = Field(
        64,
        ge=1,
        le=4096,
        description="Requests handled at the same time; beyond it the answer is 503 at once.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a connection has to send a complete request (line, headers and "
        "body) once it starts waiting for one; then it is closed (slowloris).",
    )
    keep_alive_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds an idle keep-alive connection is kept after its last response.",
    )
    fd_reserve: int = Field(
        256,
        ge=32,
        le=65536,
        description="File descriptors the HTTP server never takes: kept for sweeps (SSH "
        "connections), repairs and the state. The daemon raises its soft open-file limit to "
        "the hard one at start; HTTP connections are capped at that limit minus this.",
    )


_BASE_URL = r"^(https?://[^\s#?]+)?$"


class ReportConfig(Section):
    """Links in the audit report to the tools an operator goes to next (empty: no link)."""

    grafana_url: str = Field(
        "",
        pattern=_BASE_URL,
        description="Grafana's base URL: host names in the report link to the host dashboard "
        "with the host preset (<grafana_url>/d/<uid>?var-host=<name>).",
        examples=["https://grafana.example.org"],
    )
    alertmanager_url: str = Field(
        "",
        pattern=_BASE_URL,
        description="Alertmanager's base URL as people reach it: findings and the watchdog's "
        "own problems link to their alert there. Not [alerts] alertmanager_url, which is the "
        "watchdog's own (often loopback) address for silences.",
        examples=["https://alertmanager.example.org"],
    )
    runbook_url: str = Field(
        "",
        pattern=_BASE_URL,
        description="The rendered docs/runbooks.md: findings link to their alert's section "
        "(<runbook_url>#<alert name in lower case>).",
        examples=["https://git.example.org/ops/bup-watchdog/blob/main/docs/runbooks.md"],
    )


class Config(Section):
    """The whole watchdog configuration."""

    inventory: InventoryConfig = Field(default_factory=InventoryConfig)  # type: ignore[arg-type]
    ssh: SshConfig = Field(default_factory=SshConfig)  # type: ignore[arg-type]
    state: StateConfig = Field(default_factory=StateConfig)  # type: ignore[arg-type]
    http: HttpConfig = Field(default_factory=HttpConfig)  # type: ignore[arg-type]
    deep: DeepConfig = Field(default_factory=DeepConfig)  # type: ignore[arg-type]
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)  # type: ignore[arg-type]
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)  # type: ignore[arg-type]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # type: ignore[arg-type]
    guard: GuardConfig = Field(default_factory=GuardConfig)  # type: ignore[arg-type]
    membership: MembershipConfig = Field(default_factory=MembershipConfig)  # type: ignore[arg-type]
    repairs: dict[str, Any] = Field(
        default_factory=dict,
        description="One table per repair, [repairs.NAME]; see each repair's keys below.",
    )
    repair_settings: dict[str, Any] = Field(default_factory=dict, exclude=True)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # type: ignore[arg-type]
    report: ReportConfig = Field(default_factory=ReportConfig)  # type: ignore[arg-type]
    checks: dict[str, Any] = Field(
        default_factory=dict,
        description="One table per check, [checks.NAME]; see each check's keys below.",
    )
    # Filled by load_config from the check registry: validated settings per check name.
    check_settings: dict[str, Any] = Field(default_factory=dict, exclude=True)
    path: Path | None = Field(None, exclude=True)

    def check(self, name: str) -> Any:
        """Validated settings of one check (its defaults when the file says nothing)."""
        return self.check_settings[name]

    def repair(self, name: str) -> Any:
        """Validated settings of one repair (its defaults when the file says nothing)."""
        return self.repair_settings[name]
