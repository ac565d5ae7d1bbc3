"""The `factory` command: thin wrappers over library calls, with one error boundary."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from factory.errors import FactoryError

CATALOG_OPTION = click.option("-f", "--file", "catalog_path", type=click.Path(path_type=Path),
                              default=Path("models.yaml"), show_default=True, help="The catalog to read.")


class FactoryGroup(click.Group):
    """Prints a FactoryError as its lines on stderr and exits 1: users never see a traceback for bad input."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FactoryError as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


# Commands import their modules lazily: `factory validate` must not pay for importing mlflow or bentoml.
@click.group(cls=FactoryGroup)
def main() -> None:
    """Model Factory: one models.yaml to BentoML services, a GitLab pipeline, a proxy and Kubernetes."""


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
def render(catalog_path: Path, out_dir: Path, check: bool) -> None:
    """Render Bento folders, the child pipeline, routes.yaml and base manifests."""
    from factory.render import render_file

    summary = render_file(catalog_path, out_dir, check=check)
    if check:
        click.echo(f"{out_dir}: up to date ({summary.files} files)")
    else:
        state = "written" if summary.changed else "unchanged"
        click.echo(f"{out_dir}: {summary.files} files {state}")


@main.command()
@CATALOG_OPTION
def summary(catalog_path: Path) -> None:
    """Print the models and routes the catalog serves."""
    from factory.summary import catalog_summary

    click.echo(catalog_summary(catalog_path))


@main.command()
@CATALOG_OPTION
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Build every model in the catalog.")
def build(catalog_path: Path, names: tuple[str, ...], everything: bool) -> None:
    """Import models from MLflow and build their Bentos (skipping unchanged ones)."""
    from factory.build import build_command

    build_command(catalog_path, names, everything, progress=click.echo)


if __name__ == "__main__":
    main()
