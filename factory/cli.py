"""The `factory` command: thin wrappers over library calls, with one error boundary."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from factory.boundary import translate
from factory.settings import API_TOKEN_ENV, FUZZ_EXAMPLES_ENV, KEPT_VERSIONS_ENV, LOAD_SECONDS_ENV, redact_text


class Seconds(click.FloatRange):
    """click's FloatRange lets nan through (no comparison with it is true)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


CATALOG_OPTION = click.option("-f", "--file", "catalog_path", type=click.Path(path_type=Path),
                              default=Path("models.yaml"), show_default=True, help="The catalog to read.")


class FactoryGroup(click.Group):
    """Prints any error as its lines on stderr and exits 1: users never see a traceback (factory/boundary.py)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and --help: click prints those itself
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # the boundary: every library's errors become one FactoryError
            error = translate(exc)
            for line in error.lines():
                click.echo(redact_text(line), err=True)
            sys.exit(error.exit_code)


def echo(line: str) -> None:
    """A command's progress line: a registry's or index's credential never reaches a job log."""
    click.echo(redact_text(line))


# Commands import their modules lazily: `factory validate` must not pay for importing mlflow or bentoml.
@click.group(cls=FactoryGroup)
def main() -> None:
    """Model Factory: one models.yaml to BentoML services, a GitLab pipeline, a proxy and Kubernetes.

    Each command lives in factory/<command>.py (validate: factory/loader.py). Environment variables:
    factory/settings.py and README.
    """


@main.command()
@CATALOG_OPTION
def validate(catalog_path: Path) -> None:
    """Check models.yaml; print one line per problem."""
    from factory.loader import load_catalog

    catalog = load_catalog(catalog_path)
    click.echo(f"{catalog_path}: ok ({len(catalog.models)} models, {len(catalog.experiments)} experiments)")


@main.command()
@CATALOG_OPTION
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path("build"), show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the files under --out are not what a render gives.")
@click.option("--changed-since", "changed_since", metavar="REF",
              help="Child pipeline jobs only for models changed since this git ref (e.g. a merge base).")
@click.option("--last-deploy", type=click.Path(path_type=Path), metavar="FILE",
              help="The last deploy's record: alias versions it deployed; without --changed-since, its commit "
                   "is the ref (a missing file means every model).")
@click.option("--deploy/--no-deploy", default=True, show_default=True,
              help="Whether the child pipeline applies to the cluster (no for merge requests and tags).")
def render(catalog_path: Path, out_dir: Path, check: bool, changed_since: str | None, last_deploy: Path | None,
           deploy: bool) -> None:
    """Render Bento folders, the child pipeline, routes.yaml and base manifests."""
    from factory.render import render_file

    summary = render_file(catalog_path, out_dir, check=check, changed_since_ref=changed_since,
                          last_deploy=last_deploy, deploy=deploy)
    if check:
        click.echo(f"{out_dir}: up to date ({summary.files} files)")
    else:
        state = "written" if summary.changed else "unchanged"
        click.echo(f"{out_dir}: {summary.files} files {state}")


@main.command()
@CATALOG_OPTION
def routes(catalog_path: Path) -> None:
    """Print the routes the catalog serves, with batching and resources."""
    from factory.routes import routes_command

    click.echo(routes_command(catalog_path))


@main.command()
@CATALOG_OPTION
def summary(catalog_path: Path) -> None:
    """Print per route and variant: fuzz result, p99, peak memory and memory request (also as markdown)."""
    from factory.summary import summary_command

    click.echo(summary_command(catalog_path))


@main.command()
@CATALOG_OPTION
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Build every model in the catalog.")
@click.option("--no-image", is_flag=True, help="Bentos only: write each Dockerfile, build no image.")
@click.option("--proxy", is_flag=True, help="Also build and push the proxy image.")
def build(catalog_path: Path, names: tuple[str, ...], everything: bool, no_image: bool, proxy: bool) -> None:
    """Import models from MLflow, build their Bentos, build and push their images (skipping unchanged ones)."""
    from factory.build import build_command

    build_command(catalog_path, names, everything, progress=echo, images=not no_image, proxy=proxy)


@main.command(name="test")
@CATALOG_OPTION
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Test every model in the catalog.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fuzzing seed (a failure prints it).")
@click.option("--examples", type=click.IntRange(min=0), default=60, show_default=True, envvar=FUZZ_EXAMPLES_ENV,
              help=f"Valid requests to generate; twice as many invalid ones. [env {FUZZ_EXAMPLES_ENV}]")
@click.option("--load-seconds", type=Seconds(min=0, max=3600), default=6.0, show_default=True,
              envvar=LOAD_SECONDS_ENV,
              help=f"Length of the load phase, the capacity search. [env {LOAD_SECONDS_ENV}]")
def test_models(catalog_path: Path, names: tuple[str, ...], everything: bool, seed: int, examples: int,
                load_seconds: float) -> None:
    """Serve built models, fuzz them from their signatures, check golden outputs, measure memory."""
    from factory.test import TestSettings, test_command

    settings = TestSettings(seed=seed, valid_examples=examples, invalid_examples=2 * examples,
                            load_seconds=load_seconds)
    test_command(catalog_path, names, everything, settings, progress=echo)


@main.command(name="manifests")
@CATALOG_OPTION
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Size every model in the catalog.")
@click.option("--proxy", is_flag=True, help="Also write the proxy's Deployment, Service and routes ConfigMap.")
@click.option("--allow-failed", is_flag=True, help="Also size models whose last `factory test` failed or is missing.")
def manifests_cmd(catalog_path: Path, names: tuple[str, ...], everything: bool, proxy: bool,
                  allow_failed: bool) -> None:
    """Write Kubernetes manifests sized from measured memory, validated offline."""
    from factory.manifests import manifests_command

    manifests_command(catalog_path, names, everything, proxy, progress=echo, allow_failed=allow_failed)


@main.command()
@click.option("--dry-run", is_flag=True, help="Server-side dry run: the cluster validates, nothing changes.")
@click.option("--skip-without-cluster", is_flag=True, help="Exit 0 with a note when no kubeconfig is set (CI).")
def deploy(dry_run: bool, skip_without_cluster: bool) -> None:
    """Server-side apply the written manifests to the current kubeconfig's cluster."""
    from factory.deploy import deploy_command

    deploy_command(dry_run, skip_without_cluster, progress=echo)



@main.command(name="record-deploy")
@CATALOG_OPTION
@click.option("--commit", required=True, help="The deployed commit (in CI: \"$CI_COMMIT_SHA\").")
@click.option("--kept", envvar=KEPT_VERSIONS_ENV, default="",
              help=f"Alias models deployed earlier and kept, as name=version ... [env {KEPT_VERSIONS_ENV}]")
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True)
def record_deploy(catalog_path: Path, commit: str, kept: str, out: Path) -> None:
    """Record what this pipeline deployed: the commit and every alias model's registry version."""
    from factory.deploy_record import record_deploy as write_record

    write_record(catalog_path, commit, kept, out, progress=echo)


@main.command(name="fetch-artifacts")
@click.argument("jobs", nargs=-1, required=True)
@click.option("--api", envvar="CI_API_V4_URL", default="", help="GitLab's REST API [env CI_API_V4_URL].")
@click.option("--project", envvar="CI_PROJECT_ID", default="", help="Project id [env CI_PROJECT_ID].")
@click.option("--pipeline", envvar="CI_PIPELINE_ID", default="", help="Pipeline id [env CI_PIPELINE_ID].")
@click.option("--api-token", envvar=API_TOKEN_ENV, default="", help=f"A read_api token [env {API_TOKEN_ENV}].")
@click.option("--job-token", envvar="CI_JOB_TOKEN", default="", help="Used without --api-token [env CI_JOB_TOKEN].")
def fetch_artifacts(jobs: tuple[str, ...], api: str, project: str, pipeline: str, api_token: str,
                    job_token: str) -> None:
    """Fetch earlier jobs' artifacts of this pipeline through the API; what is gone is regenerated by later steps."""
    from factory.artifacts import GitLabApi, fetch_artifacts as fetch

    fetch(GitLabApi.configured(api, project, pipeline, api_token, job_token), list(jobs), Path.cwd(),
          progress=echo)


@main.command()
@CATALOG_OPTION
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: a free one).")
def serve(catalog_path: Path, name: str, port: int | None) -> None:
    """Serve one built model on 127.0.0.1 as its pod would, until Ctrl-C (replays `factory test` failures)."""
    from factory.up import serve_command

    serve_command(catalog_path, name, port, progress=echo)


@main.command()
@CATALOG_OPTION
@click.option("--containers", is_flag=True, help="Run the pushed images (models and proxy) in containers.")
def up(catalog_path: Path, containers: bool) -> None:
    """Serve every built model and the proxy on 127.0.0.1 until Ctrl-C or SIGTERM; print curl examples."""
    from factory.up import up_command

    up_command(catalog_path, progress=echo, containers=containers)


if __name__ == "__main__":
    main()
