"""The S3 result store: objects ``<prefix><job id>/attempt-<n>.<ext>`` in a bucket of any
S3-compatible store (AWS S3, MinIO, Ceph RGW, R2, …), through boto3.

Nothing is shared between the API and the workers but the bucket: a worker encodes an
attempt's files in a temporary directory and uploads each with one ``PutObject``, which S3
makes visible whole or not at all (no reader sees half an object, and a killed upload leaves
nothing). The key carries the attempt (``base.attempt_file_name``), and ``START`` gives each
attempt of a job to one worker only, so two attempts never write the same key. A reference is
the object's key; a key outside the prefix or not under a job id is never read or signed.

Where a local directory has a hidden temporary file, this store has nothing: an attempt that
died after uploading part of its files leaves whole objects the record does not point at, and
they go with the job's other objects when its record does (retention, DELETE), as the sweep
finds them.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from service.engine.output import write_video_files
from service.engine.types import GeneratedVideo
from service.queue.records import is_job_id
from service.settings import ServiceSettings
from service.storage.base import (
    KeptFiles,
    StoredObject,
    StoredResult,
    StoreUnavailable,
    Variant,
    attempt_file_name,
)

logger = logging.getLogger(__name__)

# A store that does not answer a connection within this long is unreachable; a started
# request may take longer (an upload of a large video on a slow link).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# botocore's "standard" retry mode: this many tries of a failed request, with jittered backoff.
MAX_ATTEMPTS = 3
READ_CHUNK_BYTES = 256 * 1024
# DeleteObjects takes at most this many keys per call.
DELETE_BATCH = 1000
_OBJECT_NAME = re.compile(r"^attempt-\d+(\.spritesheet)?\.(mp4|png|jpg)$")
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"}


def _client(settings: ServiceSettings, endpoint: str) -> Any:
    """A boto3 S3 client (thread-safe: the API's threads share one) of its own session."""
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style.value},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        # Checksums only where S3 requires them: the CRC trailers boto3 sends by default
        # are not understood by every S3-compatible store, and the body is signed anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    credentials: dict[str, str] = {}
    if settings.s3_access_key_id.get_secret_value():
        credentials = {
            "aws_access_key_id": settings.s3_access_key_id.get_secret_value(),
            "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
        }
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint or None, config=config, **credentials)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class S3ResultStore:
    def __init__(self, settings: ServiceSettings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_key_prefix
        self.region = settings.s3_region
        self.endpoint = settings.s3_endpoint_url
        self._s3 = _client(settings, settings.s3_endpoint_url)
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self._public = self._s3 if public == settings.s3_endpoint_url else _client(settings, public)

    # --- keys ------------------------------------------------------------------------------

    def key(self, job_id: str, attempt: int, variant: Variant) -> str:
        return self._job_prefix(job_id) + attempt_file_name(attempt, variant)

    def _job_prefix(self, job_id: str) -> str:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{self.prefix}{job_id}/"

    def _is_ours(self, ref: str | None) -> bool:
        """A key this store writes: under the prefix, in a job's folder, an attempt's file."""
        if not ref or not ref.startswith(self.prefix):
            return False
        job_id, _, name = ref[len(self.prefix) :].partition("/")
        return is_job_id(job_id) and _OBJECT_NAME.fullmatch(name) is not None

    # --- errors ----------------------------------------------------------------------------

    def _unavailable(self, error: Exception, doing: str) -> StoreUnavailable:
        """One line that says what failed and which setting to look at."""
        where = f"QVGEN_S3_ENDPOINT_URL={self.endpoint or '(AWS)'}"
        if isinstance(error, NoCredentialsError):
            why = (
                "no credentials: set QVGEN_S3_ACCESS_KEY_ID and QVGEN_S3_SECRET_ACCESS_KEY "
                "(or AWS_ACCESS_KEY_ID / a role boto3 finds)"
            )
        elif isinstance(error, _UNREACHABLE):
            why = f"{where} is unreachable ({_one_line(error)})"
        elif isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket" or (status == 404 and doing.startswith("bucket")):
                why = f"QVGEN_S3_BUCKET={self.bucket} does not exist at {where}"
            elif code in _BAD_CREDENTIALS or status == 403:
                why = (
                    f"{where} refused the credentials for QVGEN_S3_BUCKET={self.bucket} "
                    f"(QVGEN_S3_ACCESS_KEY_ID / QVGEN_S3_SECRET_ACCESS_KEY: {code or status})"
                )
            elif code in _WRONG_REGION or status == 301:
                why = f"QVGEN_S3_REGION={self.region} is not the region of {self.bucket} ({code})"
            else:
                why = f"{where} answered {status} {code}: {_one_line(error)}"
        else:
            why = f"{where}: {type(error).__name__}: {_one_line(error)}"
        return StoreUnavailable(f"result store: {doing} failed: {why}")

    # --- the interface ---------------------------------------------------------------------

    def check(self) -> None:
        """The bucket exists and these credentials may write, read and delete under the prefix
        (a probe object, removed at once)."""
        probe = f"{self.prefix}.qvgen-probe-{secrets.token_hex(6)}"
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as error:
            raise self._unavailable(error, "bucket check") from error
        try:
            self._s3.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._s3.head_object(Bucket=self.bucket, Key=probe)
            self._s3.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as error:
            raise self._unavailable(
                error, f"writing, reading and deleting under QVGEN_S3_KEY_PREFIX={self.prefix!r}"
            ) from error

    def write(self, job_id: str, attempt: int, video: GeneratedVideo) -> StoredResult:
        keys = {variant: self.key(job_id, attempt, variant) for variant in Variant}
        uploaded: list[str] = []
        with tempfile.TemporaryDirectory(prefix="qvgen-result-") as tmp:
            local = {
                variant: Path(tmp) / attempt_file_name(attempt, variant) for variant in Variant
            }
            write_video_files(
                video,
                local[Variant.VIDEO],
                local[Variant.THUMBNAIL],
                local[Variant.SPRITESHEET],
            )
            try:
                for variant in Variant:
                    with local[variant].open("rb") as body:
                        self._s3.put_object(
                            Bucket=self.bucket,
                            Key=keys[variant],
                            Body=body,
                            ContentType=variant.media_type,
                        )
                    uploaded.append(keys[variant])
            except (BotoCoreError, ClientError) as error:
                self._delete_keys(uploaded)
                raise self._unavailable(error, f"upload of {keys[variant]}") from error
        return StoredResult(
            video=keys[Variant.VIDEO],
            thumbnail=keys[Variant.THUMBNAIL],
            spritesheet=keys[Variant.SPRITESHEET],
        )

    def delete(self, result: StoredResult) -> None:
        self._delete_keys([ref for ref in result.refs if self._is_ours(ref)])

    def delete_job(self, job_id: str, refs: Iterable[str] = ()) -> None:
        keys = {ref for ref in refs if self._is_ours(ref)}
        try:
            keys.update(key for key, _ in self._objects(self._job_prefix(job_id)))
        except (BotoCoreError, ClientError) as error:
            logger.warning("%s; the sweep removes them later", self._unavailable(error, "listing"))
        self._delete_keys(sorted(keys))

    def stat(self, ref: str | None) -> StoredObject | None:
        if ref is None or not self._is_ours(ref):
            return None
        head = self._unless_missing(ref, lambda: self._s3.head_object(Bucket=self.bucket, Key=ref))
        if head is None:
            return None
        return StoredObject(
            ref=ref,
            size=int(head["ContentLength"]),
            etag=str(head["ETag"]),
            modified=head["LastModified"].timestamp(),
        )

    def read(self, ref: str, first: int, last: int) -> Iterator[bytes] | None:
        if not self._is_ours(ref):
            return None
        got = self._unless_missing(
            ref,
            lambda: self._s3.get_object(Bucket=self.bucket, Key=ref, Range=f"bytes={first}-{last}"),
        )
        return None if got is None else _chunks(got["Body"])

    def _unless_missing(
        self, ref: str, call: Callable[[], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """``call``'s answer about object ``ref``; None when the object does not exist, and
        ``StoreUnavailable`` for any other failure."""
        try:
            return call()
        except ClientError as error:
            if _status(error) == 404:
                return None
            raise self._unavailable(error, f"reading {ref}") from error
        except BotoCoreError as error:
            raise self._unavailable(error, f"reading {ref}") from error

    def presigned_url(
        self, ref: str, variant: Variant, filename: str, expires_s: int
    ) -> str | None:
        """A GET URL signed (locally, no request) for the public endpoint's host."""
        if not self._is_ours(ref):
            return None
        try:
            url: str = self._public.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": ref,
                    "ResponseContentType": variant.media_type,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=expires_s,
            )
        except BotoCoreError as error:  # no credentials found
            raise self._unavailable(error, f"signing a URL of {ref}") from error
        return url

    def sweep(self, kept_files: KeptFiles, grace_s: float) -> int:
        """Delete the objects of jobs whose record is gone, once older than ``grace_s``;
        returns how many. While a record exists its objects stay (an attempt uploads before
        it completes, so an object the record does not name yet may be about to be named).
        Peers sweep at the same time; deleting a deleted key succeeds, so they need not agree.
        A failing store is logged and ends this sweep; the next one goes on."""
        cutoff = time.time() - grace_s
        removed = 0
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    job_id = str(common["Prefix"])[len(self.prefix) :].rstrip("/")
                    if is_job_id(job_id) and kept_files(job_id) is None:
                        stale = [
                            key
                            for key, modified in self._objects(self._job_prefix(job_id))
                            if modified < cutoff
                        ]
                        removed += self._delete_keys(stale)
        except (BotoCoreError, ClientError) as error:
            logger.warning("sweep stopped: %s", self._unavailable(error, "listing"))
        return removed

    # --- helpers ---------------------------------------------------------------------------

    def _objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, modification time) of every object under ``prefix``."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"]), item["LastModified"].timestamp()

    def _delete_keys(self, keys: list[str]) -> int:
        """Delete ``keys``; returns how many the store confirmed. Failures are logged: what
        stays is swept once the job's record is gone."""
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                reply = self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": False},
                )
            except (BotoCoreError, ClientError) as error:
                logger.warning(
                    "%s; the sweep removes them later", self._unavailable(error, "deleting")
                )
                continue
            deleted += len(reply.get("Deleted", []))
            for failed in reply.get("Errors", []):
                logger.warning("could not delete %s: %s", failed.get("Key"), failed.get("Code"))
        return deleted


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(READ_CHUNK_BYTES)
    finally:
        body.close()
