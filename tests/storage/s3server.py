"""A real S3-compatible server for tests: moto in server mode on 127.0.0.1 and a free port,
started as a subprocess and stopped by the pid this helper started. Every read and write of the
code under test goes over HTTP to it (nothing in the test process is mocked).

    with S3Server() as s3:                  # or S3Server(auth=True): signatures checked
        s3.create_bucket("bert4ray-test")
        env = s3.env()                      # AWS_ENDPOINT_URL, keys, region for subprocesses
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

MOTO = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, auth: bool = False, log_dir: Path | None = None):
        self.auth, self.port = auth, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key_id, self.secret = "testing", "testing"
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> S3Server:
        env = dict(os.environ)
        if self.auth:
            # moto accepts any key unless told otherwise: these first requests (bucket creation
            # and the IAM calls that make a user and its key) are the only unauthenticated ones.
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"
        log = open(self.log_dir / f"moto-{self.port}.log", "wb") if self.log_dir else subprocess.DEVNULL
        self.proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}") from None
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("moto_server did not answer within 60 s")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)      # its own session: only what we started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def env(self, key_id: str | None = None, secret: str | None = None) -> dict[str, str]:
        """The standard variables boto3, pyarrow and MLflow read (no bert4ray-specific ones)."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": key_id or self.key_id,
                "AWS_SECRET_ACCESS_KEY": secret or self.secret, "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str = "s3"):
        import boto3
        return boto3.client(service, endpoint_url=self.url, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def create_user_key(self, user: str = "bert4ray") -> None:
        """An IAM user allowed everything, whose key becomes this server's key (auth=True)."""
        iam = self.client("iam")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)


@contextmanager
def environ(values: dict[str, str]):
    """os.environ with `values` set for the block (pyarrow reads it when a file system is made)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def bucket_server(log_dir: Path, bucket: str, objects: dict[str, bytes]):
    """A server with one bucket holding `objects` (key -> bytes), its variables set in os.environ."""
    with S3Server(log_dir=log_dir) as server:
        server.create_bucket(bucket)
        for key, data in objects.items():
            server.put(bucket, key, data)
        with environ(server.env()):
            yield server
