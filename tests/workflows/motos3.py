"""A moto S3 server on loopback with IAM authentication enforced, for the S3 tests (``test_s3.py``) and the S3
fault benchmark (``benchmarks/faults_s3.py``): one helper, so both talk to S3 the same way.

A plain module (not fixtures); pytest puts this folder on sys.path for the tests in it, the benchmark adds it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import boto3
import requests
import s3fs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """No ambient AWS configuration, and never a proxy between us and the loopback server."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AWS_") and "proxy" not in k.lower()}
    env.update(AWS_EC2_METADATA_DISABLED="true", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env


def _policy(actions: list[str]) -> str:
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})


class MotoS3:
    """A moto server subprocess with two IAM users: ``admin`` (s3:*) and ``reader`` (get and list only)."""

    def __init__(self, tmp: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "moto.log"), "wb")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=clean_env())
        self._wait()
        # IAM set-up happens while the server still accepts unauthenticated requests ...
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        self.admin = self._user(iam, "isovol-admin", ["s3:*"])
        self.reader = self._user(iam, "isovol-reader", ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"])
        # ... then every request must carry a valid signature of a known access key (moto's reset-auth
        # endpoint sets INITIAL_NO_AUTH_ACTION_COUNT of the running server; 0 = enforce from now on)
        r = requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        r.raise_for_status()

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=0.5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start within 30 s")

    @staticmethod
    def _user(iam: Any, name: str, actions: list[str]) -> tuple[str, str]:
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=_policy(actions))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def options(self, user: tuple[str, str] | None = None, *, secret: str | None = None,
                style: str = "client_kwargs") -> dict[str, Any]:
        """s3fs storage options; ``style`` picks where endpoint_url goes (both forms are accepted by s3fs)."""
        key, good_secret = user or self.admin
        opts: dict[str, Any] = {"key": key, "secret": secret or good_secret}
        if style == "client_kwargs":
            opts["client_kwargs"] = {"endpoint_url": self.endpoint}
        else:
            opts["endpoint_url"] = self.endpoint
        return opts

    def fs(self) -> Any:
        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.options())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
