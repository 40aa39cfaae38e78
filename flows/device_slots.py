"""The flow's slots (`flow.gpu_slots`): the devices that stages marked `meta: {gpu: true}` in dvc.yaml hold while
their command runs, handed to the stage's process as environment.

With one slot (the default) a stage's process sees what the machine has, as it always did. With several, each
stage process sees only the device(s) it holds (CUDA_VISIBLE_DEVICES) and gets a share of the cores as its torch
threads (OMP_NUM_THREADS), so that stages side by side do not fight over them. `flow.threads_per_slot` fixes the
thread count of every stage process, slot or not, in both modes: CPU floats depend on it, so runs with different
slots compare bit for bit only with it fixed.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.config import Params, ParamsError

CP_STAGE = "cp"  # the stage that runs cp.distributed.nproc_per_node processes, a device each


class SlotsError(ParamsError):
    """`flow.gpu_slots` does not fit the machine or the stages that must hold them."""


def slot_devices(params: Params, cuda_devices: int) -> list[int | None]:
    """The device of each slot: the CUDA ids `flow.gpu_slots` lists, the first N devices for a count N on a CUDA
    machine, none (the CPU) elsewhere; refused when a slot names a device the machine does not have."""
    slots = params.flow.gpu_slots
    if isinstance(slots, int) and not cuda_devices:
        return [None] * slots
    devices = slots if isinstance(slots, list) else list(range(slots))
    if max(devices) >= cuda_devices:
        raise SlotsError(f"flow.gpu_slots: {slots} needs CUDA device {max(devices)} but this machine has "
                         f"{cuda_devices} visible: give at most {cuda_devices} slots, or list the device ids")
    return list(devices)


def devices_needed(stage: str, params: Params) -> int:
    """The slots a stage holds: CP one a process on this node (none to wait for a cluster its `launch` starts), any
    other stage one."""
    distributed = params.cp.distributed
    if stage == CP_STAGE:
        return 0 if distributed.launch else distributed.nproc_per_node
    return 1


class DeviceSlots:
    """The slots of one flow run: stages take what they need, waiting while others hold them."""

    def __init__(self, devices: list[int | None], threads: int | None, every_stage: bool = True) -> None:
        self.devices = devices
        self.threads = threads
        self.every_stage = every_stage  # threads for the stages that hold no slot too (fixed by the user)
        self._free = list(range(len(devices)))  # slot indices, lowest first
        self._changed = threading.Condition()

    @classmethod
    def for_run(cls, params: Params) -> DeviceSlots:
        """The slots `flow.gpu_slots` gives on this machine, with the thread count each stage process gets."""
        import torch  # the stages' own check of the machine: only a flow run needs it here

        devices = slot_devices(params, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if params.flow.threads_per_slot is not None:
            return cls(devices, params.flow.threads_per_slot)
        shared = max(1, (os.cpu_count() or 1) // len(devices)) if len(devices) > 1 else None
        return cls(devices, shared, every_stage=False)

    @property
    def side_by_side(self) -> bool:
        """Whether stages may run at the same time (more than one slot)."""
        return len(self.devices) > 1

    def check(self, stage: str, needed: int) -> None:
        """Refuse, before any work, a stage that needs more slots than there are (it would wait for ever)."""
        if self.side_by_side and needed > len(self.devices):
            raise SlotsError(f"stage {stage} runs {needed} processes, a device each, but flow.gpu_slots gives "
                             f"{len(self.devices)} slots: give it at least {needed} (or one slot: the stage then "
                             "sees every device)")

    @contextmanager
    def hold(self, needed: int) -> Iterator[dict[str, str]]:
        """Hold `needed` slots while the block runs; yields the environment the stage process gets. One slot: the
        whole machine, untouched (a stage of several processes sees every device)."""
        if not self.side_by_side:
            yield self._environment([])
            return
        with self._changed:
            self._changed.wait_for(lambda: len(self._free) >= needed)
            held, self._free = self._free[:needed], self._free[needed:]
        try:
            yield self._environment([self.devices[index] for index in held])
        finally:
            with self._changed:
                self._free = sorted(self._free + held)
                self._changed.notify_all()

    def _environment(self, held: list[int | None]) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads)} if self.threads and (held or self.every_stage) else {}
        cuda = [str(device) for device in held if device is not None]
        return env | ({"CUDA_VISIBLE_DEVICES": ",".join(cuda)} if cuda else {})
