"""Reaching an MLflow registry as companies run it (README, "MLflow registries"): which URIs (MLflow's own
precedence), waits bounded, credentials kept to the factory's own process, and every way of not getting through
(credentials refused, nobody listening, a server that hangs or answers 5xx, an artifact store out of reach) as one
error naming the registry and the variables that fix it.

MLflow's errors here are translated by what caused them: the HTTP status, or the type of the requests/urllib3/botocore
exception MLflow wrapped (their wording is shown, never matched).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from factory.errors import RegistryError
from factory.settings import TRACKING_CREDENTIALS, Settings, public_url

# MLflow's defaults (120 s per request, 7 retries) kept a build waiting ~20 min on a server that accepts and never
# answers, per request. Set only where the user has not set them: a hang now ends after 6 x 30 s + ~60 s of backoff.
BOUNDED_WAITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"}
CREDENTIALS_FIX = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow's basic auth, `mlflow server "
                   "--app-name basic-auth`) or MLFLOW_TRACKING_TOKEN (a bearer token) to credentials the server "
                   "accepts")
UNSUPPORTED_SCHEMES = {"databricks": "a Databricks workspace registry", "databricks-uc": "Databricks Unity Catalog",
                       "uc": "a Unity Catalog registry"}


def registry_uris(tracking: str) -> tuple[str, str]:
    """(tracking URI, registry URI) as MLflow resolves them (`mlflow.get_registry_uri`): MLFLOW_REGISTRY_URI when
    set, else the tracking URI. Both checked: a typo refused here rather than found as "no such model"."""
    registry = Settings.from_env().registry_uri or tracking
    for name, uri in (("MLFLOW_TRACKING_URI", tracking), ("MLFLOW_REGISTRY_URI", registry)):
        check_uri(name, uri)
    return tracking, registry


def check_uri(name: str, uri: str) -> None:
    scheme = (urlsplit(uri).scheme or uri).lower()
    if scheme.split("+")[0] == "sqlite":
        _check_sqlite(name, uri)
    elif scheme in UNSUPPORTED_SCHEMES or scheme.startswith("databricks"):
        what = UNSUPPORTED_SCHEMES.get(scheme, "a Databricks registry")
        raise RegistryError(f"{name}={public_url(uri)}: {what} is not supported: the factory reads MLflow's "
                            "open-source registry (a tracking server over http(s), or its database) and was never run "
                            "against Databricks; export the models to an MLflow tracking server (mlflow-export-import, "
                            f"or log and register them there) and point {name} at it")


def _check_sqlite(name: str, uri: str) -> None:
    """MLflow creates an empty registry at a sqlite path that does not exist, which then has "no such model"."""
    path = uri.split("://", 1)[1][1:] if "://" in uri else ""
    if path in ("", ":memory:") or path.startswith(":memory:"):
        raise RegistryError(f"{name}={uri}: an in-memory sqlite database holds no registry; set it to "
                            "sqlite:////absolute/path/mlflow.db")
    database = Path(unquote(path.split("?", 1)[0]))  # as SQLAlchemy reads it: %20 is a space
    if database.is_file():
        return
    hint = ""
    if not database.is_absolute() and Path("/", database).is_file():
        hint = f" (did you mean sqlite:////{database}? An absolute path takes four slashes)"
    raise RegistryError(f"{name}={uri}: no MLflow database at {database.resolve()}{hint}; MLflow would create an "
                        "empty registry there. Fix the path, or unset it to use the project's registry/mlflow.db")


def bound_waits() -> None:
    for name, value in BOUNDED_WAITS.items():
        os.environ.setdefault(name, value)


def probe(client, tracking: str, registry: str) -> None:
    """One cheap call to each server before any model: an unreachable registry or refused credentials is said once,
    not once per model."""
    from mlflow.exceptions import MlflowException

    calls = [("MLFLOW_REGISTRY_URI" if registry != tracking else "MLFLOW_TRACKING_URI", registry,
              lambda: client.search_registered_models(max_results=1))]
    if registry != tracking:
        calls.append(("MLFLOW_TRACKING_URI", tracking, lambda: client.search_experiments(max_results=1)))
    for variable, uri, call in calls:
        if urlsplit(uri).scheme.lower() not in ("http", "https"):
            continue
        try:
            call()
        except MlflowException as exc:
            raise RegistryError(access_failure(exc, uri, variable) or
                                f"the MLflow server at {public_url(uri)} ({variable}) failed: {_first_line(exc)}"
                                ) from exc


def access_failure(exc: BaseException, uri: str, variable: str = "MLFLOW_TRACKING_URI") -> Optional[str]:
    """What kept the factory from the server at `uri`, and the fix; None when the server answered (a missing model,
    a bad request): the caller says that in its own terms."""
    shown = f"the MLflow server at {public_url(uri)} ({variable})"
    status = _status(exc)
    if status == 401:
        return f"{shown} refused the request: HTTP 401, not authenticated ({_credentials_set(uri)}); {CREDENTIALS_FIX}"
    if status == 403:
        user = Settings.from_env().tracking_username
        who = f"user '{user}' (MLFLOW_TRACKING_USERNAME)" if user else "these credentials"
        return (f"{shown} refused the request: HTTP 403, {who} may not read it ({_first_line(exc)}); ask its admin "
                f"to grant READ on the registered model, or {CREDENTIALS_FIX}")
    cause = _network_cause(exc)
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT

    waits = f"{_attempts()} attempts, MLFLOW_HTTP_REQUEST_TIMEOUT={MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s each"
    if cause == "timeout":
        return (f"{shown} accepted the connection but did not answer ({waits}); check that the server is healthy "
                "(its /health), or raise MLFLOW_HTTP_REQUEST_TIMEOUT if it is only slow")
    if cause == "tls":
        return (f"{shown} presented a TLS certificate this machine does not trust ({_first_line(_innermost(exc))[:200]}"
                "); set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed it (a company CA), or fix the "
                "server's certificate")
    if cause == "connect":
        return (f"{shown} cannot be reached: nothing answers at that address ({_attempts()} attempts: "
                f"{_first_line(_innermost(exc))[:200]}); check {variable} (scheme, host and port) and that the "
                "server runs")
    if cause == "dropped":
        return (f"{shown} closed the connection without answering ({_attempts()} attempts); a proxy or load balancer "
                "in front of it may have dropped the request: check its log and that the server is up")
    if cause and cause.startswith("status"):
        return (f"{shown} answered HTTP {cause.split()[1]} to all {_attempts()} attempts; the server's own log says "
                f"why: check that it and its database are up, then run the command again")
    return None


def explain(exc: BaseException, uri: str, variable: str, where: str, subject: str) -> Optional[str]:
    """Why reading `subject` (for the models.yaml entry at `where`) failed, if the registry or its artifact store was
    out of reach; None otherwise. The artifact store first: MLflow re-raises S3's AccessDenied as an HTTP 403 of its
    own, which is not the registry's."""
    access = access_failure(exc, uri, variable)
    return artifact_failure(exc, f"{where}: {subject}") or (f"{where}: {access}" if access else None)


def artifact_failure(exc: BaseException, what: str) -> Optional[str]:
    """A model's artifacts out of reach (the registry answered, the artifact store did not); None if not that."""
    chain = _chain(exc)
    missing = next((link for link in chain if isinstance(link, ModuleNotFoundError) and link.name), None)
    if missing is not None:
        package = {"boto3": "boto3", "botocore": "boto3", "azure": "azure-storage-blob",
                   "google": "google-cloud-storage"}.get(missing.name.split(".")[0], missing.name)
        return (f"{what}: MLflow needs the Python package '{package}' to download its artifacts, and the factory's "
                f"environment ({sys.prefix}) lacks it: add it to requirements.lock (or to the venv FACTORY_VENV names) "
                "and run `make venv`")
    boto = next((link for link in chain if type(link).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")),
                None)
    if boto is None:
        return None
    from mlflow.environment_variables import MLFLOW_S3_ENDPOINT_URL

    endpoint = MLFLOW_S3_ENDPOINT_URL.get()
    store = f"S3 (MLFLOW_S3_ENDPOINT_URL={endpoint})" if endpoint else "S3 (AWS: MLFLOW_S3_ENDPOINT_URL is unset)"
    name = type(boto).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        fix = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to credentials that may read the "
               "bucket")
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        fix = ("check MLFLOW_S3_ENDPOINT_URL (an S3-compatible store such as MinIO: its http(s) address) and that the "
               "store is up")
    else:
        fix = ("check that the bucket exists and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY may read it (and "
               "MLFLOW_S3_ENDPOINT_URL for an S3-compatible store)")
    said = _first_line(exc) if exc is not boto else f"{name}: {_first_line(boto)}"
    return f"{what}: its artifacts could not be read from {store}: {said[:300]}; {fix}"


def _status(exc: BaseException) -> Optional[int]:
    from mlflow.exceptions import MlflowException

    return exc.get_http_status_code() if isinstance(exc, MlflowException) else None


def _network_cause(exc: BaseException) -> Optional[str]:
    """"timeout", "connect" or "status NNN" from the requests/urllib3 exceptions MLflow wrapped, else None."""
    for link in _chain(exc):
        kind = type(link).__name__
        if kind in ("ReadTimeoutError", "ReadTimeout", "Timeout"):
            return "timeout"
        if kind in ("SSLError", "SSLCertVerificationError"):
            return "tls"
        if kind in ("NewConnectionError", "ConnectTimeoutError", "ConnectTimeout", "NameResolutionError"):
            return "connect"
        if kind in ("RemoteDisconnected", "ProtocolError"):
            return "dropped"
        if kind == "ResponseError":  # urllib3: "too many 503 error responses", every retry spent
            words = [word for word in str(link).split() if word.isdigit()]
            return f"status {words[0] if words else '5xx'}"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it was raised from or during, and urllib3's MaxRetryError.reason, to the bottom."""
    found, pending = [], [exc]
    while pending and len(found) < 20:
        link = pending.pop(0)
        if not isinstance(link, BaseException) or any(link is seen for seen in found):
            continue  # urllib3's reason and an exception's args are not always exceptions (SSLError.reason: a str)
        found.append(link)
        pending.extend([link.__cause__, link.__context__, getattr(link, "reason", None), *link.args])
    return found


def _innermost(exc: BaseException) -> BaseException:
    return _chain(exc)[-1]


def _attempts() -> int:
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    return MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() + 1


def _credentials_set(uri: str) -> str:
    settings = Settings.from_env()
    values = (settings.tracking_username, settings.tracking_password, settings.tracking_token)
    named = [name for name, value in zip(TRACKING_CREDENTIALS, values) if value]
    if urlsplit(uri).username is not None:
        named.insert(0, "the user:password in the URI")
    return f"sent with {' and '.join(named)}" if named else "none of " + ", ".join(TRACKING_CREDENTIALS) + " is set"


def _first_line(exc: BaseException) -> str:
    """The error's text on one line, any credential in a URL it quotes taken out."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return Settings.from_env().redact(" ".join(str(text).split()))[:300]
