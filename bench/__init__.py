


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
