


def use_example_registry() -> None:
    """Point MLflow at the registry `factory` would use (MLFLOW_TRACKING_URI, else `make registry`'s), or exit
    with factory's message: never let MLflow create an empty sqlite file where the example registry belongs,
    which would make `make registry` think it is done."""
    import os
    import sys
    from pathlib import Path

    from factory.errors import RegistryError
    from factory.registry import tracking_uri

    try:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(Path(__file__).resolve().parent.parent)
    except RegistryError as exc:
        sys.exit(str(exc))


def load_arguments(doc: str, work: str, repeats: int):
    """The options of a bench that serves models of its own registry under wrk: --seconds, --connections,
    --repeats and --work (its registry and state, factory-state/`work` by default, reused by the next run)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent.parent / "factory-state" / work)
    return parser.parse_args()


def use_work_dir(work, register) -> None:
    """Point MLflow, the factory's state and BentoML's stores into `work` (work/registry, work/state); `register`
    fills work/registry on the first run only, and later runs reuse it."""
    import os

    registry = work / "registry"
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{registry / 'mlflow.db'}",
                       "FACTORY_STATE": str(work / "state"), "BENTOML_HOME": str(work / "state" / "bentoml")})
    if not (registry / "mlflow.db").is_file():
        registry.mkdir(parents=True, exist_ok=True)
        register(registry)
