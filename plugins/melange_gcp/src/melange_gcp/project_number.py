"""The project's number, which Pub/Sub's service agent is named after.

Pub/Sub's service agent is ``service-<project number>@gcp-sa-pubsub.iam.gserviceaccount.com``;
resources are named by project *id*. The number comes from, in order:

- the ``project_number`` option;
- the ``project`` option itself when it is a number (Pub/Sub accepts either);
- the Cloud Resource Manager API, asked once
  (``GET https://cloudresourcemanager.googleapis.com/v1/projects/<id>``, which needs
  ``resourcemanager.projects.get``, part of e.g. ``roles/browser``), with the backend's
  own credentials through google-auth's ``AuthorizedSession``. google-auth and
  requests come with google-cloud-pubsub, so nothing is added to the install
  (google-cloud-resource-manager is not needed).

It is looked up only when a dead-letter policy is declared on the real service.
When it cannot be found, a ConfigurationError says how to pass it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from melange.exceptions import ConfigurationError

__all__ = ["LOOKUP_URL", "ProjectNumber", "check_project_number"]

logger = logging.getLogger("melange.gcp.project_number")

LOOKUP_URL = "https://cloudresourcemanager.googleapis.com/v1/projects/{project}"
"""Cloud Resource Manager's projects.get; its answer holds ``projectNumber``."""


def check_project_number(value: object) -> str | None:
    """Return the ``project_number`` option as a string of digits, or raise ConfigurationError."""
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or not text.isascii():
        raise ConfigurationError(
            f"project_number must be the project's number (digits, as shown by `gcloud "
            f"projects describe PROJECT --format='value(projectNumber)'`), got {value!r}"
        )
    return text


def _how_to_pass(project: str) -> str:
    return (
        f"pass project_number=... (`gcloud projects describe {project} "
        "--format='value(projectNumber)'`), or dead_letter_permissions=\"skip\" if Pub/Sub's "
        "service agent already may publish to the dead-letter topics and subscribe to the "
        "source subscriptions"
    )


class ProjectNumber:
    """Finds and remembers the project's number; call it to get the number.

    Args:
        project: The project id.
        option: The ``project_number`` option, if given (digits).
        credentials: google-auth credentials for the lookup (``None``: no lookup).
        timeout: Seconds the lookup may take.
        url: The lookup URL template (``{project}`` is replaced); for tests.
    """

    def __init__(
        self,
        project: str,
        option: str | None,
        credentials: Any,
        timeout: float,
        url: str = LOOKUP_URL,
    ) -> None:
        self._project = project
        self._number = option or (project if project.isdigit() else None)
        self._credentials = credentials
        self._timeout = timeout
        self._url = url
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """Return the number; look it up the first time.

        Raises:
            ConfigurationError: It cannot be found (no credentials, the lookup
                was refused or failed); the message says how to pass it.
        """
        with self._lock:
            if self._number is None:
                self._number = self._look_up()
            return self._number

    def _look_up(self) -> str:
        project = self._project
        needed = (
            f"the dead-letter permissions need the number of project {project!r} (Pub/Sub's "
            "service agent is named after it)"
        )
        if self._credentials is None:
            raise ConfigurationError(f"{needed}; {_how_to_pass(project)}")
        from google.auth import exceptions as auth_exceptions
        from google.auth.transport.requests import AuthorizedSession
        from requests import RequestException

        session = AuthorizedSession(self._credentials)  # type: ignore[no-untyped-call]
        try:
            response = session.get(self._url.format(project=project), timeout=self._timeout)
            status = response.status_code
            body = response.json() if status == 200 else None
        except (RequestException, ValueError, auth_exceptions.GoogleAuthError) as error:
            # Summarized: google-auth's messages may quote a key file.
            raise ConfigurationError(
                f"{needed}, and asking Cloud Resource Manager for it failed "
                f"({type(error).__name__}); {_how_to_pass(project)}"
            ) from None
        finally:
            session.close()  # type: ignore[no-untyped-call]
        number = body.get("projectNumber") if isinstance(body, dict) else None
        if not isinstance(number, str) or not number.isdigit():
            hint = (
                " (the caller needs resourcemanager.projects.get, e.g. roles/browser, and the "
                "Cloud Resource Manager API enabled)"
                if status in (401, 403)
                else ""
            )
            raise ConfigurationError(
                f"{needed}, and Cloud Resource Manager did not give it: HTTP {status}{hint}; "
                f"{_how_to_pass(project)}"
            )
        logger.debug("project %r is number %s (from Cloud Resource Manager)", project, number)
        return number
