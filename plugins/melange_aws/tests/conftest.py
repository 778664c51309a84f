"""Fixtures of the aws backend's tests: moto's in-process AWS mock with dummy credentials.

Each test gets a fresh mock (an empty account) and an environment that holds
only dummy AWS settings, so nothing from the machine's own AWS configuration
(profiles, endpoints, real credentials) can leak in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import moto.sqs.models
import pytest
from melange_aws import AWSBackend
from moto import mock_aws
from moto.core import utils as moto_utils

ACCESS_KEY_ID = "AKIAMELANGETESTKEY01"
SECRET_ACCESS_KEY = "melange/test/SECRET+key/0123456789abcdefghij"
REGION = "us-east-1"


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    """Dummy credentials and region in the environment; every other AWS_* variable removed."""
    for variable in list(os.environ):
        if variable.startswith("AWS_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # No profile or config file of this machine may take part.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.path.join(tmp_path, "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.path.join(tmp_path, "no-credentials"))


def _unix_time(dt: object = None) -> float:
    return time.time() if dt is None else float(moto_utils.unix_time(dt))


def _unix_time_millis(dt: object = None) -> float:
    return _unix_time(dt) * 1000.0


@pytest.fixture
def mocked_aws(aws_environment: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Moto's in-process mock of every AWS service, fresh for the test.

    moto's SQS reads the clock through datetime arithmetic for every message of
    the queue on every call (it recomputes all queue attributes per message), so
    a 1,000-message queue takes ~50 s to fill and drain. The same clock read
    with ``time.time()`` gives the same values about 20 times faster; nothing
    else of moto is changed.
    """
    monkeypatch.setattr(moto.sqs.models, "unix_time", _unix_time)
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", _unix_time_millis)
    with mock_aws():
        yield


@pytest.fixture
def backend(mocked_aws: None) -> Iterator[AWSBackend]:
    """An AWSBackend configured by the environment alone, closed after the test."""
    aws = AWSBackend()
    yield aws
    aws.close()
