"""dvc.yaml's code deps, checked against the code: every project module a stage's command imports is a dep of that
stage, or on the short list below with the reason it is not. A module left out would let its change go unseen."""
from __future__ import annotations

import ast
from contextlib import chdir
from pathlib import Path

from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pipelines"
COMMAND = "python -m pipelines "
# modules every stage imports whose change must not rerun every stage
NOT_DEPS = {
    "pipelines/__init__.py": "the package marker",
    "pipelines/__main__.py": "`python -m pipelines`: hands over to the CLI",
    "pipelines/cli.py": "dispatch and argument parsing; each command's work is in its own module",
    "pipelines/config.py": "the params model: each stage lists the params it reads, which DVC compares by value",
    "pipelines/atomic.py": "how outputs are written (atomically), not what they hold",
    "pipelines/layout.py": "where files are: a path that moves moves in dvc.yaml too",
    "pipelines/stage_log.py": "what a stage command logs about itself",
    "pipelines/model_card.py": "a model card's wording never retrains or re-merges a model",
}


def _module_file(name: str) -> Path | None:
    """The file of project module `name` (a dotted path), or None when it is not one."""
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, package: str) -> set[Path]:
    """Project modules the code under `tree` imports (inside functions too), `package` being its own package."""
    files: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]  # an imported name may be a module
        else:
            continue
        for name in names:
            parts = name.split(".")
            files |= {f for i in range(1, len(parts) + 1) if parts[0] == PACKAGE
                      and (f := _module_file(".".join(parts[:i])))}
    return files


def _closure(files: set[Path], seen: set[Path]) -> set[Path]:
    """`files` and every project module they import, directly or not, but through the modules already `seen`."""
    seen = set(seen)
    todo = list(files)
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        if str(file.relative_to(REPO)) in NOT_DEPS:  # its own imports serve what it is listed for
            continue
        name = ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(_imported(ast.parse(file.read_text()), package) - seen)
    return seen


def command_modules(command: str) -> set[str]:
    """Every project module `python -m pipelines <command>` imports: the CLI's own imports and the command's."""
    cli = ast.parse((REPO / PACKAGE / "cli.py").read_text())
    (function,) = [node for node in cli.body  # typer names a command after its function, `_` as `-`
                   if isinstance(node, ast.FunctionDef) and node.name == command.replace("-", "_")]
    top = ast.Module(body=[node for node in cli.body if isinstance(node, (ast.Import, ast.ImportFrom))],
                     type_ignores=[])
    cli_file = REPO / PACKAGE / "cli.py"  # read above, command by command: its other commands' imports are not
    entry = {REPO / PACKAGE / "__main__.py", REPO / PACKAGE / "__init__.py"}
    files = _closure(entry | _imported(top, PACKAGE) | _imported(function, PACKAGE), {cli_file}) | {cli_file}
    return {str(file.relative_to(REPO)) for file in files}


def _covered(module: str, deps: list[str]) -> bool:
    """Whether `module` is a dep, lies in a dep folder, or is a package marker that holds a docstring alone."""
    body = ast.parse((REPO / module).read_text()).body
    if module.endswith("__init__.py") and all(isinstance(node, ast.Expr) for node in body):
        return True
    return any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in deps)


def stage_commands() -> dict[str, tuple[str, list[str]]]:
    """Each resolved stage of dvc.yaml: its `python -m pipelines` command and its deps' paths."""
    with chdir(REPO), Repo(".") as repo:
        return {stage.addressing: (stage.cmd.removeprefix(COMMAND).split()[0], [dep.def_path for dep in stage.deps])
                for stage in repo.index.stages if str(getattr(stage, "cmd", "")).startswith(COMMAND)}


def test_every_module_a_stage_imports_is_one_of_its_deps() -> None:
    stages = stage_commands()
    assert {"corpus", "cp", "evaluate@chat", "curate", "align@sft", "pick"} <= set(stages)
    missing = {name: sorted(module for module in command_modules(command) - set(NOT_DEPS) if not _covered(module, deps))
               for name, (command, deps) in stages.items()}
    assert {name: modules for name, modules in missing.items() if modules} == {}


def test_the_derivation_sees_lazy_imports_inside_a_command() -> None:
    """The evaluate command imports its stage module inside the function, which imports the scoring code."""
    modules = command_modules("evaluate")
    assert {"pipelines/evaluate/stage.py", "pipelines/evaluate/generation.py", "pipelines/candidates.py"} <= modules
    assert "pipelines/merge/merger.py" not in modules  # another command's import
    assert set(NOT_DEPS) <= command_modules("inbox") | {"pipelines/model_card.py"}
