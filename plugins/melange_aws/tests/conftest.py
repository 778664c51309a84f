"""Fixtures of the aws backend's tests: moto's in-process AWS mock with dummy credentials.

Each test gets a fresh mock (an empty account) and an environment that holds
only dummy AWS settings, so nothing from the machine's own AWS configuration
(profiles, endpoints, real credentials) can leak in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from melange_aws import AWSBackend
from melange_localsqs.testing import patch_moto_sqs
from moto import mock_aws

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


@pytest.fixture
def mocked_aws(aws_environment: None) -> Iterator[None]:
    """Moto's in-process mock of every AWS service, fresh for the test.

    moto's SQS is made fast and safe under concurrent calls first (its clock read
    with ``time.time()``; receive and delete under the queue's lock, as its send
    already is): see :func:`melange_localsqs.testing.patch_moto_sqs`. Nothing of
    what moto answers changes.
    """
    patch_moto_sqs()
    with mock_aws():
        yield


@pytest.fixture
def backend(mocked_aws: None) -> Iterator[AWSBackend]:
    """An AWSBackend configured by the environment alone, closed after the test."""
    aws = AWSBackend()
    yield aws
    aws.close()
