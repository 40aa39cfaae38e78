"""The machine and package set a run was measured on, as lineage tags: with the same params, torch picks other
kernels on another kind of CPU or accelerator, and scores move (issue 33 measured 0.642 on AMD, 0.308 on Intel).

torch's view of the machine costs a process importing torch (2-4 s); the last one seen is kept in the user's cache,
under what it depends on, so that `chatgraft status` compares a champion with this machine at once."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from functools import cache
from glob import glob
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

from pipelines.atomic import write_json_atomic

PACKAGES_ARTIFACT = "environment/packages.txt"
# The ISA extensions kernels are chosen by: ATen's dispatcher (AVX2 needs avx2 + fma, AVX512 needs f/dq/bw/vl;
# SVE on ARM), oneDNN and MKL (vnni, bf16, fp16, amx).
DISPATCH_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                  "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")
# What makes a score machine-dependent, with the words `chatgraft status` uses for it.
MACHINE_TAGS = {"env.cpu": "CPU", "env.cpu_flags": "CPU flags", "env.cpu_capability": "torch CPU capability",
                "env.accelerator": "accelerator"}
TORCH_TAGS = ("env.cpu_capability", "env.threads", "env.accelerator")
# What torch's capability and devices follow besides the CPU: the variables that cap the one or hide the others, and
# the accelerators' device nodes (NVIDIA's, and the render nodes of AMD's and Intel's).
PROBE_VARIABLES = ("ATEN_CPU_CAPABILITY", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                   "ONEAPI_DEVICE_SELECTOR")
DEVICE_NODES = ("/dev/nvidia[0-9]*", "/proc/driver/nvidia/gpus/*", "/dev/dri/renderD*")


@cache
def installed_packages() -> tuple[str, ...]:
    """`name==version` of Python and every installed distribution, names normalised, sorted, each once; read once
    per process, so the list logged is the one hashed."""
    found = {f"{re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower()}=={dist.version}"
             for dist in distributions() if dist.metadata["Name"]}
    return tuple(sorted({f"python=={platform.python_version()}", *found}))


def packages_sha256(packages: Iterable[str]) -> str:
    """sha256 of a package list, whatever its order."""
    return hashlib.sha256("\n".join(sorted(packages)).encode()).hexdigest()


def cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo text."""
    block = text.split("\n\n", 1)[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def cpu_tags(info: dict[str, str]) -> dict[str, str]:
    """`env.cpu` (vendor and model, x86 or ARM fields) and `env.cpu_flags` (the dispatch flags it has)."""
    vendor = info.get("vendor_id") or info.get("CPU implementer") or platform.machine()
    model = info.get("model name") or info.get("CPU part") or platform.processor() or "unknown"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    chosen = " ".join(flag for flag in DISPATCH_FLAGS if flag in flags)
    return {"env.cpu": f"{vendor} {model}", "env.cpu_flags": chosen or "none"}


def torch_facts() -> dict[str, str]:
    """torch's CPU capability (ATEN_CPU_CAPABILITY caps it), intra-op threads and CUDA devices, in this process."""
    import torch

    names = Counter(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {"env.cpu_capability": torch.backends.cpu.get_cpu_capability(), "env.threads": str(torch.get_num_threads()),
            "env.accelerator": ", ".join(f"{count} x {name}" for name, count in names.items()) or "none"}


def _probe_torch() -> dict[str, str]:
    """torch_facts as a fresh process of this environment sees them, as a stage's does; asked in a child so that a
    long-lived flow process neither imports torch nor initialises CUDA."""
    done = subprocess.run([sys.executable, "-m", __name__], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else dict.fromkeys(TORCH_TAGS, "unknown")


def _cpu_here() -> dict[str, str]:
    cpu = Path("/proc/cpuinfo")
    return cpu_tags(cpuinfo(cpu.read_text()) if cpu.is_file() else {})


@cache
def environment_tags() -> dict[str, str]:
    """The `env.*` tags of this process's machine and packages, computed once per process (torch's view probed,
    and kept for `machine_tags`)."""
    cpu, torch = _cpu_here(), _probe_torch()
    _keep(cpu, torch)
    return {"env.packages_sha256": packages_sha256(installed_packages()), **cpu, **torch}


def machine_tags() -> dict[str, str]:
    """This machine's MACHINE_TAGS, to compare a version's with: the CPU's read now, torch's as the last probe in
    this environment on this machine saw them, probing only when none was kept for what they depend on now."""
    cpu = _cpu_here()
    torch = _kept(cpu)
    if torch is None:
        torch = _probe_torch()
        _keep(cpu, torch)
    return {key: value for key, value in {**cpu, **torch}.items() if key in MACHINE_TAGS}


def _kept_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatgraft" / "machine.json"


def _probe_key(cpu: dict[str, str]) -> str:
    """What a probe's machine tags depend on: host, CPU, torch's build, PROBE_VARIABLES and DEVICE_NODES."""
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "none"
    facts = {"host": platform.node(), "cpu": cpu, "torch": torch, "sys": sys.executable,
             "variables": {name: os.environ.get(name) for name in PROBE_VARIABLES},
             "devices": sorted(node for pattern in DEVICE_NODES for node in glob(pattern))}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _kept(cpu: dict[str, str]) -> dict[str, str] | None:
    try:
        kept = json.loads(_kept_file().read_text())
    except (OSError, ValueError):
        return None
    return kept.get("tags") if isinstance(kept, dict) and kept.get("key") == _probe_key(cpu) else None


def _keep(cpu: dict[str, str], torch: dict[str, str]) -> None:
    """Keep a probe's machine tags for `machine_tags` (not a failed probe's; a cache that cannot be written is
    only slower)."""
    tags = {key: value for key, value in torch.items() if key in MACHINE_TAGS}
    if "unknown" in tags.values():
        return
    with suppress(OSError):
        write_json_atomic(_kept_file(), {"key": _probe_key(cpu), "tags": tags})


def machine_notice(recorded: dict[str, str], here: dict[str, str]) -> str | None:
    """A note that `recorded` (a version's tags) names another kind of machine than `here`, then one line per
    machine tag that differs; None when they agree on every machine tag `recorded` holds (a version older than these
    tags holds none)."""
    differ = [f"  {label}: {recorded[key]} there, {here.get(key, 'unknown')} here"
              for key, label in MACHINE_TAGS.items() if key in recorded and recorded[key] != here.get(key)]
    if not differ:
        return None
    return "\n".join(["note: the champion's scores were measured on another kind of machine: torch picks other "
                      "kernels there, so a re-score here can differ with identical params", *differ])


if __name__ == "__main__":  # the child _probe_torch starts
    print(json.dumps(torch_facts()))
