"""Optional lm-evaluation-harness tasks on local datasets, run on a candidate by its local path."""
from __future__ import annotations

from pathlib import Path

import torch

from pipelines.devices import inference_dtype


def run_harness(model_dir: Path, tasks: list[str], include_path: Path, batch_size: int,
                device: torch.device) -> dict[str, float]:
    """Each task's metrics as `lm_eval/<task>/<metric>` (standard errors left out)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RuntimeError("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'chatgraft[lm-eval]'") from None
    manager = TaskManager(include_path=str(include_path))
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ValueError(f"eval.lm_eval_tasks: unknown tasks {unknown} (looked in lm-eval's tasks and {include_path})")
    output = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": str(inference_dtype(device)).removeprefix("torch.")},
                                     tasks=tasks, task_manager=manager, device=str(device), batch_size=batch_size)
    return {
        f"lm_eval/{task}/{key.split(',')[0]}": float(value)
        for task, metrics in output["results"].items() for key, value in metrics.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }
