"""Reaching an MLflow registry as companies run it (factory/registry_access.py): every way of not getting through is
one error naming the registry and the variables to set, waits are bounded, and credentials stay in the factory's own
process. MLflow's real client talks to an in-process HTTP server on 127.0.0.1 that answers as a misbehaving registry
would (401, 403, 503, never); the real servers (basic-auth, a bearer-token proxy, S3) were run in /tmp/sweep5."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from factory import bento_store, registry_access, runtime
from factory.cli import main
from factory.errors import RegistryError
from factory.loader import parse_catalog
from factory.registry import Registry, registry_uris, tracking_uri
from factory.serve import free_port
from factory.settings import CREDENTIAL_VARIABLES, Settings, child_environment

SECRET = "s3cr3t-registry-password"
CATALOG = "- {name: eta_model, version: 1, endpoint: eta}\n"
FIX = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow's basic auth, `mlflow server --app-name "
       "basic-auth`) or MLFLOW_TRACKING_TOKEN (a bearer token) to credentials the server accepts")


class FakeRegistry(BaseHTTPRequestHandler):
    """Answers every request with the server's `behaviour`: a status and body, or no answer at all."""

    def _answer(self) -> None:
        status, body = self.server.behaviour
        if status is None:  # accepts, reads the request, never answers
            self.server.release.wait(10)
            return
        if status == 0:  # closes the connection without a word
            self.close_connection = True
            return
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    # One attempt, no backoff, 1 s: the refusals are what is tested here, not MLflow's patience.
    for name, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in (*CREDENTIAL_VARIABLES, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    server.daemon_threads = True
    server.behaviour, server.release = (200, "{}"), threading.Event()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shut down in 50 ms
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _refusal(uri: str, registry_uri: str | None = None) -> str:
    with pytest.raises(RegistryError) as caught:
        Registry(parse_catalog(CATALOG), uri, registry_uri)
    return str(caught.value)


ACCESS = [
    ("no credentials", (401, "You are not authenticated."), {},
     "refused the request: HTTP 401, not authenticated (none of MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, "
     f"MLFLOW_TRACKING_TOKEN is set); {FIX}"),
    ("wrong password", (401, "You are not authenticated."), {"MLFLOW_TRACKING_USERNAME": "ci",
                                                              "MLFLOW_TRACKING_PASSWORD": SECRET},
     f"refused the request: HTTP 401, not authenticated (sent with MLFLOW_TRACKING_USERNAME and "
     f"MLFLOW_TRACKING_PASSWORD); {FIX}"),
    ("wrong token", (401, "missing or wrong bearer token"), {"MLFLOW_TRACKING_TOKEN": SECRET},
     f"refused the request: HTTP 401, not authenticated (sent with MLFLOW_TRACKING_TOKEN); {FIX}"),
    ("forbidden", (403, '{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}'),
     {"MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": SECRET},
     "refused the request: HTTP 403, user 'ci' (MLFLOW_TRACKING_USERNAME) may not read it (PERMISSION_DENIED: "
     f"Permission denied); ask its admin to grant READ on the registered model, or {FIX}"),
    ("503", (503, "upstream unavailable"), {},
     "answered HTTP 503 to all 1 attempts; the server's own log says why: check that it and its database are up, "
     "then run the command again"),
    ("hangs", (None, ""), {},
     "accepted the connection but did not answer (1 attempts, MLFLOW_HTTP_REQUEST_TIMEOUT=1 s each); check that the "
     "server is healthy (its /health), or raise MLFLOW_HTTP_REQUEST_TIMEOUT if it is only slow"),
]


@pytest.mark.parametrize("behaviour, env, message", [case[1:] for case in ACCESS], ids=[case[0] for case in ACCESS])
def test_a_registry_that_does_not_let_us_in_is_one_error_naming_it_and_the_fix(
        fake_registry, monkeypatch: pytest.MonkeyPatch, behaviour, env: dict, message: str) -> None:
    fake_registry.behaviour = behaviour
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _refusal(fake_registry.url) == f"the MLflow server at {fake_registry.url} (MLFLOW_TRACKING_URI) {message}"


def test_nobody_listening_names_the_address_and_the_variable(fake_registry) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    assert _refusal(nobody) == (
        f"the MLflow server at {nobody} (MLFLOW_TRACKING_URI) cannot be reached: nothing answers at that address (1 "
        "attempts: [Errno 111] Connection refused); check MLFLOW_TRACKING_URI (scheme, host and port) and that the "
        "server runs")


def test_a_server_that_drops_the_connection_is_said_so(fake_registry) -> None:
    fake_registry.behaviour = (0, "")
    assert _refusal(fake_registry.url) == (
        f"the MLflow server at {fake_registry.url} (MLFLOW_TRACKING_URI) closed the connection without answering (1 "
        "attempts); a proxy or load balancer in front of it may have dropped the request: check its log and that the "
        "server is up")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "company-ca.internal")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_a_certificate_signed_by_a_company_ca_names_the_variable_that_trusts_it(fake_registry, tmp_path: Path) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    fake_registry.socket = context.wrap_socket(fake_registry.socket, server_side=True)
    url = f"https://localhost:{fake_registry.server_port}"
    message = _refusal(url)
    assert message.startswith(f"the MLflow server at {url} (MLFLOW_TRACKING_URI) presented a TLS certificate this "
                              "machine does not trust (")
    assert message.endswith("); set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed it (a company CA), "
                            "or fix the server's certificate")


def test_a_separate_registry_is_named_by_its_own_variable(fake_registry, tmp_path: Path) -> None:
    fake_registry.behaviour = (401, "no")
    message = _refusal(f"sqlite:///{tmp_path / 'tracking.db'}", fake_registry.url)
    assert message.startswith(f"the MLflow server at {fake_registry.url} (MLFLOW_REGISTRY_URI) refused the request")
    assert _refusal(fake_registry.url, f"sqlite:///{tmp_path / 'registry.db'}").startswith(
        f"the MLflow server at {fake_registry.url} (MLFLOW_TRACKING_URI) refused the request")


def test_waits_are_bounded_where_the_user_left_them_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    registry_access.bound_waits()
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert (MLFLOW_HTTP_REQUEST_TIMEOUT.get(), MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()) == (30, 2)


def test_a_password_in_the_uri_is_used_but_never_recorded_or_printed(fake_registry, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with_password = fake_registry.url.replace("http://", f"http://ci:{SECRET}@")
    assert Registry(parse_catalog(CATALOG), with_password).uri == fake_registry.url  # what build records
    fake_registry.behaviour = (401, "no")
    assert SECRET not in _refusal(with_password)
    (tmp_path / "models.yaml").write_text(CATALOG, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build", "--all", "--no-image"], env={
        "MLFLOW_TRACKING_URI": with_password, "FACTORY_STATE": str(tmp_path / "state")})
    assert result.exit_code == 1 and SECRET not in result.output
    assert f"the MLflow server at {fake_registry.url} (MLFLOW_TRACKING_URI) refused the request: HTTP 401, not " \
           "authenticated (sent with the user:password in the URI)" in result.output


URIS = [
    ("sqlite:///tmp/nowhere-{n}/mlflow.db", "no MLflow database at {cwd}/tmp/nowhere-{n}/mlflow.db; MLflow would "
     "create an empty registry there. Fix the path, or unset it to use the project's registry/mlflow.db"),
    ("sqlite:////tmp/nowhere-{n}/mlflow.db", "no MLflow database at /tmp/nowhere-{n}/mlflow.db; MLflow would create an "
     "empty registry there. Fix the path, or unset it to use the project's registry/mlflow.db"),
    ("sqlite://", "an in-memory sqlite database holds no registry; set it to sqlite:////absolute/path/mlflow.db"),
    ("sqlite:///:memory:", "an in-memory sqlite database holds no registry; set it to "
     "sqlite:////absolute/path/mlflow.db"),
    *[(uri, f"{what} is not supported: the factory reads MLflow's open-source registry (a tracking server over "
            "http(s), or its database) and was never run against Databricks; export the models to an MLflow tracking "
            "server (mlflow-export-import, or log and register them there) and point MLFLOW_TRACKING_URI at it")
      for uri, what in (("databricks", "a Databricks workspace registry"),
                        ("databricks-uc", "Databricks Unity Catalog"),
                        ("databricks://prod-profile", "a Databricks workspace registry"),
                        ("uc:http://localhost:8080", "a Unity Catalog registry"))],
]


@pytest.mark.parametrize("uri, message", URIS, ids=["sqlite-relative", "sqlite-absolute", "memory", "memory-path",
                                                     "databricks", "databricks-uc", "databricks-profile", "uc"])
def test_a_registry_uri_the_factory_cannot_use_is_refused_before_mlflow_creates_anything(
        uri: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(n=tmp_path.name))
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(RegistryError) as caught:
        registry_uris(tmp_path)
    assert str(caught.value) == f"MLFLOW_TRACKING_URI={uri.format(n=tmp_path.name)}: " + message.format(
        n=tmp_path.name, cwd=tmp_path)
    assert not list(tmp_path.rglob("*.db"))


def test_a_sqlite_path_missing_its_fourth_slash_is_pointed_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    typo = f"sqlite://{database}"  # sqlite:///tmp/...: a path relative to the working directory
    with pytest.raises(RegistryError) as caught:
        registry_access.check_uri("MLFLOW_REGISTRY_URI", typo)
    assert str(caught.value) == (f"MLFLOW_REGISTRY_URI={typo}: no MLflow database at {tmp_path}{database} (did you "
                                 f"mean sqlite:///{database}? An absolute path takes four slashes); MLflow would "
                                 "create an empty registry there. Fix the path, or unset it to use the project's "
                                 "registry/mlflow.db")


def test_registry_uri_precedence_is_mlflows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_REGISTRY_URI, else the tracking URI (mlflow.get_registry_uri); the tracking URI, else the project's
    registry/mlflow.db."""
    (tmp_path / "registry").mkdir()
    for name in ("registry.db", "registry/mlflow.db"):
        (tmp_path / name).write_bytes(b"")
    embedded, separate = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'registry.db'}"
    server = "http://mlflow.internal:5000"
    for tracking_env, registry_env, expected in ((None, None, (embedded, embedded)), (server, None, (server, server)),
                                                 (server, separate, (server, separate))):
        for name, value in (("MLFLOW_TRACKING_URI", tracking_env), ("MLFLOW_REGISTRY_URI", registry_env)):
            monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
        assert registry_uris(tmp_path) == expected
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(RegistryError) as caught:
        tracking_uri(tmp_path)
    assert str(caught.value) == ("MLFLOW_REGISTRY_URI is set but MLFLOW_TRACKING_URI is not: MLflow finds a version's "
                                 "artifacts through the tracking server; set MLFLOW_TRACKING_URI too (the same URI "
                                 "when one server holds both)")


def test_a_checkout_under_a_path_with_spaces_and_accents_reads_its_embedded_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` in "/tmp/s10 env/Model Factory (copy)/mf-é" failed every model: the embedded registry's URI held
    the path's spaces, and once MLflow had exported it (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI) the
    factory's own check refused it. The URI is percent-encoded; SQLAlchemy decodes it back to the file."""
    from sqlalchemy.engine import make_url

    database = tmp_path / "Model Factory (copy)" / "mf-é" / "registry" / "mlflow.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    uri = tracking_uri(database.parent.parent)
    assert uri.endswith("/Model%20Factory%20%28copy%29/mf-%C3%A9/registry/mlflow.db")
    assert make_url(uri).database == str(database)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert Settings.from_env().tracking_uri == uri
    assert registry_uris(database.parent.parent) == (uri, uri)


def _raised_inside(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, as MLflow's S3 repository re-raises botocore's errors."""
    try:
        try:
            raise inner
        except Exception:
            raise outer
    except Exception as exc:
        return exc


def _artifact_cases() -> list[tuple[str, Exception, str]]:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    from mlflow.exceptions import MlflowException

    bucket = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"}},
                         "ListObjectsV2")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")
    check = ("check that the bucket exists and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY may read it (and "
             "MLFLOW_S3_ENDPOINT_URL for an S3-compatible store)")
    return [
        ("no boto3", _raised_inside(MlflowException("x"), ModuleNotFoundError("No module named 'boto3'", name="boto3")),
         f"MLflow needs the Python package 'boto3' to download its artifacts, and the factory's environment "
         f"({sys.prefix}) lacks it: add it to requirements.lock (or to the venv FACTORY_VENV names) and run "
         "`make venv`"),
        ("no credentials", NoCredentialsError(),
         "its artifacts could not be read from S3 (MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000): NoCredentialsError: "
         "Unable to locate credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to "
         "credentials that may read the bucket"),
        ("unreachable", EndpointConnectionError(endpoint_url="http://127.0.0.1:9000/models"),
         "its artifacts could not be read from S3 (MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000): "
         "EndpointConnectionError: Could not connect to the endpoint URL: \"http://127.0.0.1:9000/models\"; check "
         "MLFLOW_S3_ENDPOINT_URL (an S3-compatible store such as MinIO: its http(s) address) and that the store is up"),
        ("wrong bucket", _raised_inside(MlflowException("Failed to list artifacts in s3://nope/1: The specified "
                                                        "bucket does not exist", error_code="RESOURCE_DOES_NOT_EXIST"),
                                        bucket),
         "its artifacts could not be read from S3 (MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000): Failed to list "
         f"artifacts in s3://nope/1: The specified bucket does not exist; {check}"),
        # MLflow re-raises S3's AccessDenied as PERMISSION_DENIED (HTTP 403): the store's, not the registry's.
        ("denied", _raised_inside(MlflowException("Failed to list artifacts in s3://b/1: Access Denied",
                                                  error_code="PERMISSION_DENIED"), denied),
         "its artifacts could not be read from S3 (MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000): Failed to list "
         f"artifacts in s3://b/1: Access Denied; {check}"),
    ]


def test_an_artifact_store_out_of_reach_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    for case, exc, message in _artifact_cases():
        explained = registry_access.explain(exc, "http://mlflow:5000", "MLFLOW_TRACKING_URI", "models.yaml:1: model "
                                            "'eta_model'", "eta_model version 1")
        assert explained == f"models.yaml:1: model 'eta_model': eta_model version 1: {message}", case
    assert registry_access.explain(KeyError("x"), "http://mlflow:5000", "MLFLOW_TRACKING_URI", "w", "s") is None


def test_spawned_processes_get_no_registry_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """bentoml, uv, the golden script and served models read local files: the registry's credentials stay here."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.setenv(name, SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://ci:{SECRET}@mlflow.internal")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry.internal:5000")
    seen = bento_store.run([sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"], "printing")
    for environment in (json.loads(seen), runtime.interpreter_environment(Path(sys.executable)), child_environment()):
        assert not CREDENTIAL_VARIABLES & set(environment) and SECRET not in json.dumps(environment)
        assert environment["MLFLOW_TRACKING_URI"] == "https://mlflow.internal"
        assert environment["MLFLOW_REGISTRY_URI"] == "http://registry.internal:5000"


def test_credentials_are_redacted_from_any_printed_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-" + SECRET)
    line = f"API request to http://ci:{SECRET}@mlflow/api failed; header Bearer tok-{SECRET}; body {SECRET}"
    assert Settings.from_env().redact(line) == ("API request to http://***@mlflow/api failed; header Bearer ***; "
                                                "body ***")



def test_an_artifact_store_error_met_anywhere_else_still_says_where_to_look() -> None:
    from botocore.exceptions import NoCredentialsError

    from factory.boundary import translate

    assert str(translate(NoCredentialsError())) == (
        "botocore: NoCredentialsError: Unable to locate credentials (hint: an S3 artifact store: check "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL (README, \"MLflow registries\"))")
