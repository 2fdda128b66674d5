"""A real S3-protocol HTTP server for the tests: moto in server mode on a free port of this
machine, and settings that point the service at one bucket of it.

moto keeps its buckets in this test process; the API and the workers are other processes that
reach it over HTTP only, as they would reach MinIO or AWS. Each test makes its own bucket (and
key prefix), so tests sharing the session's server never see each other's objects.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from service.settings import ServiceSettings
from tests.service.redis_fixtures import free_port, make_settings

ACCESS_KEY, SECRET_KEY, REGION = "test-access", "test-secret", "us-east-1"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"qvgen-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """While inside, the server checks every request's signature against its IAM users
        (it has none: every key is unknown); by default it accepts any."""
        httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()
        try:
            yield
        finally:
            httpx.post(f"{self.url}/moto-api/reset-auth", content=b"inf", timeout=10)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(
    redis_url: str, s3: S3Server, bucket: str, results_dir: Path, **overrides: object
) -> ServiceSettings:
    """``make_settings`` with the S3 store on ``bucket`` under a fresh key prefix.
    ``results_dir`` is where the local store would write: tests check that nothing does."""
    values: dict[str, object] = {
        "result_store": "s3",
        "s3_endpoint_url": s3.url,
        "s3_bucket": bucket,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY,
        "s3_secret_access_key": SECRET_KEY,
        "s3_key_prefix": f"r{uuid.uuid4().hex[:8]}/",
        "s3_addressing_style": "path",
    }
    values.update(overrides)
    return make_settings(redis_url, results_dir, **values)
