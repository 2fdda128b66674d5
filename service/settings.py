"""The service's settings: one pydantic-settings class read from ``QVGEN_*`` environment variables.

Every process of the service (API, worker, ``qvgen serve all``, ``qvgen bench service``) reads
the same class, so an operator sets a value once for the whole deployment. Durations are in
seconds, sizes in bytes. Outside ``QVGEN_ENVIRONMENT=development`` the settings refuse the
defaults that are only safe on a laptop (no API keys).
"""

from __future__ import annotations

import base64
import enum
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.engine.caching.offer import THRESHOLDS, CacheDefaults
from service.engine.types import AttentionKernel, CompilePolicy
from service.webhooks.urls import PortRange, WebhookPolicy, WebhookUrlError, check_host_pattern

MASTER_SECRET_BYTES = 32


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ResultStoreKind(enum.StrEnum):
    """Where the workers put a job's files (``service.storage``)."""

    LOCAL = "local"  # a directory the API and every worker mount (one host, or a shared volume)
    S3 = "s3"  # a bucket of any S3-compatible object store: nothing shared but the network


class ContentDelivery(enum.StrEnum):
    """How ``GET /v1/videos/{id}/content`` hands out a file."""

    STREAM = "stream"  # the API reads it from the store and sends it (Range requests included)
    REDIRECT = "redirect"  # 307 to a presigned URL of the object store: the bytes bypass the API


class S3AddressingStyle(enum.StrEnum):
    """How a request names the bucket: botocore's ``addressing_style``."""

    AUTO = "auto"  # botocore's choice (virtual-hosted where the bucket name allows it)
    PATH = "path"  # http://host/bucket/key: MinIO and most self-hosted stores
    VIRTUAL = "virtual"  # http://bucket.host/key


class MetricsAccess(enum.StrEnum):
    """Who may read the API's ``GET /metrics`` (per-route volume, queue depth) with keys on."""

    ADMIN = "admin"  # an admin key (Prometheus: ``authorization: {credentials: <admin key>}``)
    PUBLIC = "public"  # anyone who reaches the port: only where the network is private


class ApiDocs(enum.StrEnum):
    """How the API serves ``/docs``, ``/redoc`` and ``/openapi.json``."""

    PUBLIC = "public"
    KEY = "key"  # any valid API key (sent as ``Authorization: Bearer``), when keys are on
    OFF = "off"  # not served (404)


def _split_csv(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a list from Python."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ServiceSettings(BaseSettings):
    """Settings of the API, the workers and the queue between them."""

    # hide_input_in_errors: a refused value may be a secret (an API key, QVGEN_WEBHOOK_SECRET),
    # and pydantic would quote it in the startup error; validators quote only what is safe.
    model_config = SettingsConfigDict(
        env_prefix="QVGEN_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    environment: Environment = Environment.DEVELOPMENT
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Connections one API process keeps to Redis; a request waits up to redis_pool_timeout_s
    # for a free one (then 503) rather than failing at once.
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)
    # A Redis command unanswered this long fails (the API answers 503 with Retry-After).
    redis_socket_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)
    # Every Redis key starts with this, so several deployments (or tests) can share a server.
    key_prefix: str = Field(default="qvgen", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    # Models the API accepts and /readyz expects a live worker for; the first is the default.
    models: Annotated[tuple[str, ...], NoDecode] = ("qvgen-tiny",)
    # Bearer keys; empty means no authentication (refused outside development). Each key sees
    # only the jobs it created.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Keys that see, download, cancel and delete every key's jobs (operators).
    admin_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    # With keys on, who reads the API's /metrics; and how the OpenAPI docs are served.
    metrics_access: MetricsAccess = MetricsAccess.ADMIN
    api_docs: ApiDocs = ApiDocs.PUBLIC

    # Processes `qvgen serve api` runs, each with its own event loop and Redis pool (uvicorn's
    # workers); one is enough for a few hundred submissions a second on a core.
    api_processes: int = Field(default=1, ge=1, le=64)

    # --- limits -------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_queue_depth: int = Field(default=1000, ge=1, le=1_000_000)
    # Of a model's unfinished (queued or running) jobs, the most one API key may have; more are
    # answered 429 with Retry-After (queue_full_retry_after_s). 0: no per-key limit. Applies
    # only with API keys on (the key is the tenant).
    max_jobs_per_key: int = Field(default=100, ge=0, le=1_000_000)
    queue_full_retry_after_s: int = Field(default=10, ge=1, le=3600)
    poll_after_ms: int = Field(default=1000, ge=10, le=60_000)
    # Requests one API process serves at once; more are answered 503 with Retry-After.
    max_concurrent_requests: int = Field(default=256, ge=1, le=100_000)
    # An idle keep-alive connection is closed after this long. Longer than any client's pool
    # keeps one idle (httpx and the OpenAI SDK: 5 s; aiohttp: 15 s; a load balancer: 60 s), so
    # that the client always closes first: a server closing at the client's own expiry races
    # the client's next request on that connection, which then meets a reset.
    http_keep_alive_s: int = Field(default=75, ge=20, le=3600)
    # A request's line and headers must arrive within this long of its first byte (of the
    # connection's opening, for its first request), and fit in max_header_bytes; else 408 or 431
    # and the connection is closed (``service.api.http_guard``).
    http_header_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1 << 20)
    # A request's whole body must arrive within this long of its headers; else 408 and the
    # connection is closed (1 MiB in 30 s is 35 kB/s).
    http_body_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # Of max_concurrent_requests, the most one API key (or all requests without a valid key,
    # together) holds at once; more are answered 429 with Retry-After. /healthz and /readyz are
    # outside both caps. Applies only with API keys on (the key is the tenant).
    max_concurrent_requests_per_key: int = Field(default=64, ge=1, le=100_000)

    # --- request defaults when the client leaves a field out -----------------------------
    default_size: str = Field(default="64x64", pattern=r"^[0-9]{1,4}x[0-9]{1,4}$")
    default_fps: int = Field(default=8, ge=1, le=60)
    default_num_frames: int = Field(default=17, ge=1, le=1025)
    default_num_inference_steps: int = Field(default=20, ge=1, le=500)
    default_guidance_scale: float = Field(default=5.0, ge=0.0, le=50.0)

    # --- queue reliability ----------------------------------------------------------------
    # A job whose owner has not refreshed it for this long is claimed by another worker.
    claim_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0.0, le=600.0)
    # Attempts that may start (crashes count, SIGTERM hand-backs do not); then dead-letter.
    max_deliveries: int = Field(default=3, ge=1, le=100)
    # A job still queued this long after submission fails with code "expired".
    queued_ttl_s: int = Field(default=3600, ge=1, le=7 * 86400)
    # Finished jobs and their files are kept this long, then deleted.
    retention_s: int = Field(default=86400, ge=1, le=365 * 86400)
    # SIGTERM: finish the running job if it ends within this long, else hand it back.
    drain_timeout_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    # How often a worker sweeps expired queued jobs and out-of-retention files.
    janitor_interval_s: float = Field(default=30.0, gt=0.0, le=3600.0)

    # --- result files (service.storage) ----------------------------------------------------
    result_store: ResultStoreKind = ResultStoreKind.LOCAL
    # The local store's directory (result_store=local).
    results_dir: Path = Path("results")
    # The object store (result_store=s3). An empty endpoint is AWS's for the region; empty keys
    # leave the credentials to boto3's default chain (AWS_* variables, an instance or pod role).
    s3_endpoint_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    # The endpoint clients reach, where it differs (a store inside a private network): presigned
    # URLs are signed for their host, so they must name this one.
    s3_public_endpoint_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    s3_bucket: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$")
    s3_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    # Every object's key starts with this ("" or ending in "/"), so deployments can share a
    # bucket; the workers' sweep looks only under it.
    s3_key_prefix: str = Field(default="results/", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    s3_addressing_style: S3AddressingStyle = S3AddressingStyle.AUTO
    # How /content answers, and how long a presigned URL of a redirect stays valid (SigV4's
    # limit is 7 days).
    content_delivery: ContentDelivery = ContentDelivery.STREAM
    content_url_ttl_s: int = Field(default=3600, ge=1, le=7 * 86400)

    # --- webhooks and live progress (service.webhooks, GET /v1/videos/{id}/events) ----------
    # Where every job's video.completed / video.failed goes unless its request names its own
    # ``webhook_url``; empty: only jobs that name one get webhooks.
    webhook_url: str = Field(default="", max_length=2048)
    # Hosts a request's ``webhook_url`` may name (exact names; "*.example.com" for its
    # subdomains); empty: requests may not name one. The API checks, so that a client cannot
    # make the deliverer call into the deployment's own network.
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # The single-tenant signing secret, "whsec_" + base64 of the key (``service.webhooks.signing``):
    # signs the events to webhook_url (the operator's receiver) and every event without an
    # owner (no API keys, or written before per-key secrets). With API keys, tenants get secrets
    # of their own from webhook_master_secret instead (``service.webhooks.tenants``).
    webhook_secret: SecretStr = SecretStr("")
    # Base64 of at least 32 random bytes (`openssl rand -base64 32`): each API key's signing
    # secret is derived from it (``service.webhooks.tenants``); an admin creates and rotates
    # them (POST /v1/admin/webhooks/{owner}/secret). Empty: no per-key secrets.
    webhook_master_secret: SecretStr = SecretStr("")
    # Delivery attempts per event; between them, exponential backoff with jitter from
    # webhook_retry_base_s up to webhook_retry_max_s (``service.webhooks.outbox.retry_delay_s``).
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_retry_base_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    webhook_retry_max_s: float = Field(default=3600.0, gt=0.0, le=86400.0)
    # One attempt's deadline, all of it: resolving, connecting, sending, and reading the answer
    # (a receiver answering a byte at a time cannot stretch it).
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # Ports a webhook URL may name ("443", "8000-8999"); the deployment's webhook_url is exempt.
    webhook_allowed_ports: Annotated[tuple[str, ...], NoDecode] = ("80", "443")
    # Let webhooks reach loopback, private, link-local... addresses (``service.webhooks.urls``):
    # development and tests only (their receivers listen on 127.0.0.1); production refuses it.
    webhook_allow_private_addresses: bool = False
    # Attempts one deliverer runs at once, and at once to any one receiver host: a slow host
    # holds at most its share, and the others' events go on.
    webhook_concurrency: int = Field(default=16, ge=1, le=1024)
    webhook_concurrency_per_host: int = Field(default=4, ge=1, le=1024)
    # Where a webhook deliverer's /metrics listens (0: any free port, as for workers); its host
    # is worker_metrics_host. Apart from the workers' ports (worker_metrics_port + i) that
    # `qvgen serve all` starts beside it.
    webhook_metrics_port: int = Field(default=9190, ge=0, le=65535)
    # Server-sent-event streams one API process holds open at once (each holds one Redis
    # connection while it waits); more are answered 429 with Retry-After.
    max_event_streams: int = Field(default=32, ge=1, le=10_000)
    # Of those, the most one API key holds open (with keys on); more are answered 429.
    max_event_streams_per_key: int = Field(default=8, ge=1, le=10_000)

    # --- worker engine --------------------------------------------------------------------
    # torch.compile of the transformer: auto = on CUDA only (``service.engine.compilation``).
    compile_transformer: CompilePolicy = CompilePolicy.AUTO
    # Inductor's and Triton's generated code, kept across worker restarts so that a restarted
    # worker skips code generation; on a volume in containers, shared by a host's workers.
    compile_cache_dir: Path = Path("compile-cache")
    # Self-attention kernel of the worker's model: sdpa, or int8 (Wan; where it measures faster).
    attention_kernel: AttentionKernel = AttentionKernel.SDPA
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    # Where a worker's /metrics listens: this machine only, unless set (compose: 0.0.0.0).
    worker_metrics_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    # CPU threads of a worker's torch operations; 0: the cores given to this process, divided
    # by the workers that `qvgen serve all` starts beside it (all of them for a worker alone).
    worker_threads: int = Field(default=0, ge=0, le=1024)
    # What a request that leaves out ``cache`` / ``cache_threshold`` / ``guidance_stop`` gets on
    # this worker's model (``service.engine.caching``): a policy, NAME or NAME:THRESHOLD (none,
    # first-block, first-block-pooled, magcache), and the fraction of the steps that run the
    # unconditional guidance pass. Per model, as each worker serves one: the worker publishes
    # them with its rules and the API fills them in; a model that does not offer them (MagCache
    # without calibration, an early guidance stop on CogVideoX) refuses to start.
    default_cache: str = Field(default="none", max_length=64)
    default_guidance_stop: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator(
        "models",
        "api_keys",
        "admin_api_keys",
        "webhook_allowed_hosts",
        "webhook_allowed_ports",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            try:
                PortRange.parse(text)
            except ValueError as error:
                raise ValueError(f"QVGEN_WEBHOOK_ALLOWED_PORTS: {error}") from None
        return value

    @field_validator("models")
    @classmethod
    def _models_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("QVGEN_MODELS must name at least one model, got none")
        for name in value:
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"model id {name!r} may hold only letters, digits, '-', '_', '.'")
        return value

    @field_validator("default_cache")
    @classmethod
    def _cache_spec(cls, value: str) -> str:
        try:
            defaults = CacheDefaults.parse(value)
        except ValueError as error:
            raise ValueError(f"QVGEN_DEFAULT_CACHE={value!r}: {error}") from None
        threshold = defaults.cache_threshold
        if threshold is not None:  # parse refuses one with none
            allowed = THRESHOLDS[defaults.cache]
            if not allowed.low <= threshold <= allowed.high:  # NaN included
                raise ValueError(
                    f"QVGEN_DEFAULT_CACHE={value!r}: the threshold of {defaults.cache.value} "
                    f"must lie in [{allowed.low:g}, {allowed.high:g}]"
                )
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text:
            return value
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or len(key) < 16:
            raise ValueError(
                "QVGEN_WEBHOOK_SECRET must read whsec_<base64 of at least 16 bytes>, e.g. "
                "whsec_ + `openssl rand -base64 32`"
            )
        return value

    @field_validator("webhook_master_secret")
    @classmethod
    def _master(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text:
            return value
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            key = b""
        if len(key) < MASTER_SECRET_BYTES:
            # The message never quotes the value: it is a secret.
            raise ValueError(
                f"QVGEN_WEBHOOK_MASTER_SECRET must be base64 of at least {MASTER_SECRET_BYTES} "
                "bytes, e.g. `openssl rand -base64 32`"
            )
        return value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(check_host_pattern(pattern) for pattern in value)
        except WebhookUrlError as error:
            raise ValueError(f"QVGEN_WEBHOOK_ALLOWED_HOSTS: {error}") from None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"QVGEN_WEBHOOK_URL must be an http(s) URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        self._check_webhook_secrets()
        if self.heartbeat_interval_s * 2 > self.claim_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be at most half of "
                f"claim_timeout_s ({self.claim_timeout_s}), or a live worker loses its job"
            )
        self._check_result_store()
        if self.environment is Environment.PRODUCTION and self.webhook_allow_private_addresses:
            raise ValueError(
                "QVGEN_WEBHOOK_ALLOW_PRIVATE_ADDRESSES is on: production refuses webhooks to "
                "loopback and private addresses (a client could reach internal services)"
            )
        if self.environment is Environment.PRODUCTION and not self.api_keys:
            raise ValueError(
                "QVGEN_API_KEYS is empty: production refuses unauthenticated access "
                "(set keys, or QVGEN_ENVIRONMENT=development on a trusted machine)"
            )
        return self

    def _check_webhook_secrets(self) -> None:
        """Every event that can be written has a secret to sign it with; in production, tenants
        that name their own URLs never share one."""
        single = bool(self.webhook_secret.get_secret_value())
        if self.webhook_url and not single:
            raise ValueError(
                "QVGEN_WEBHOOK_URL is set but QVGEN_WEBHOOK_SECRET is not set: its receiver "
                "could not verify the events"
            )
        if self.webhook_allowed_hosts and not (single or self.per_key_webhook_secrets):
            raise ValueError(
                "QVGEN_WEBHOOK_ALLOWED_HOSTS is set but QVGEN_WEBHOOK_SECRET is not set, nor "
                "QVGEN_WEBHOOK_MASTER_SECRET with API keys: nothing would sign the events"
            )
        shared = self.api_keys and self.webhook_allowed_hosts and not self.per_key_webhook_secrets
        if shared and self.environment is Environment.PRODUCTION:
            raise ValueError(
                "QVGEN_API_KEYS and QVGEN_WEBHOOK_ALLOWED_HOSTS are set without "
                "QVGEN_WEBHOOK_MASTER_SECRET: every key would verify its webhooks with the one "
                "secret that signs every other key's events; production refuses it"
            )

    def _check_result_store(self) -> None:
        s3 = self.result_store is ResultStoreKind.S3
        if s3 and not self.s3_bucket:
            raise ValueError("QVGEN_S3_BUCKET is empty: QVGEN_RESULT_STORE=s3 needs a bucket")
        if bool(self.s3_access_key_id.get_secret_value()) != bool(
            self.s3_secret_access_key.get_secret_value()
        ):
            raise ValueError(
                "set both QVGEN_S3_ACCESS_KEY_ID and QVGEN_S3_SECRET_ACCESS_KEY, or neither "
                "(boto3's default credential chain)"
            )
        if self.content_delivery is ContentDelivery.REDIRECT and not s3:
            raise ValueError(
                "QVGEN_CONTENT_DELIVERY=redirect needs QVGEN_RESULT_STORE=s3 (a presigned URL "
                f"of the object store); the {self.result_store.value} store streams"
            )

    def cache_defaults(self) -> CacheDefaults:
        """``default_cache`` and ``default_guidance_stop``, as the worker's engine takes them."""
        return CacheDefaults.parse(self.default_cache, self.default_guidance_stop)

    @property
    def default_model(self) -> str:
        return self.models[0]

    def key_secrets(self) -> tuple[bytes, ...]:
        """The API keys as bytes (``service.api.auth`` compares their digests)."""
        return tuple(key.get_secret_value().encode() for key in self.api_keys)

    @property
    def per_key_webhook_secrets(self) -> bool:
        """Each API key's events are signed with a secret of its own (``service.webhooks.tenants``)."""
        return bool(self.webhook_master_secret.get_secret_value() and self.api_keys)

    @property
    def webhooks_enabled(self) -> bool:
        """Some event can be written: to the deployment's URL, or to one a request names (on
        the global host list, or on a key's own, which per-key secrets make possible)."""
        return bool(self.webhook_url or self.webhook_allowed_hosts or self.per_key_webhook_secrets)

    def webhook_policy(self) -> WebhookPolicy:
        """What per-request webhook URLs and the addresses they resolve to must satisfy."""
        return WebhookPolicy.build(
            https_only=self.environment is not Environment.DEVELOPMENT,
            ports=self.webhook_allowed_ports,
            allow_private=self.webhook_allow_private_addresses,
        )

    def admin_key_secrets(self) -> tuple[bytes, ...]:
        return tuple(key.get_secret_value().encode() for key in self.admin_api_keys)
