"""The `chatgraft` command: run the retrain flow, open the MLflow UI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from flows.environment import apply_offline_defaults

app = typer.Typer(help="chatgraft: continual pretraining + chat vector, as a tracked, reproducible pipeline.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

apply_offline_defaults()


@app.command()
def run(
    project_dir: Path = typer.Option(Path("."), help="project directory holding dvc.yaml and params.yaml"),
    set_: list[str] = typer.Option([], "--set", help="override a param before running, e.g. merge.ratios=[0.5,1.0]"),
) -> None:
    """Run the retrain flow: every stage through DVC, tracked in MLflow, winner registered and maybe promoted."""
    from flows.params_file import apply_overrides
    from flows.retrain import retrain
    from pipelines.config import ParamsError

    try:
        apply_overrides(project_dir / "params.yaml", set_)
        result = retrain(project_dir=str(project_dir))
    except ParamsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    typer.echo("\n" + result.leaderboard)


@app.command()
def ui(
    project_dir: Path = typer.Option(Path("."), help="project directory holding the embedded store"),
    port: int = typer.Option(5000, help="port of the UI"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
) -> None:
    """Open the MLflow UI on the project's store (MLFLOW_TRACKING_URI when set, else the embedded sqlite one)."""
    from flows.tracking.store import tracking_uri

    root = project_dir.resolve()
    uri = tracking_uri(root)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri,
               "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", (root / "mlflow" / "artifacts").as_uri()]
    raise typer.Exit(subprocess.call(command))
