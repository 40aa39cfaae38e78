"""The flow's slots: which device each holds, what a stage process is told, and who waits."""
from __future__ import annotations

import threading
import time

import pytest

from flows.device_slots import DeviceSlots, SlotsError, devices_needed, slot_devices
from pipelines.config import Params, ParamsError


def params(**flow) -> Params:
    return Params.model_validate({"flow": flow})


def test_slots_are_devices_on_a_cuda_machine_and_the_cpu_elsewhere() -> None:
    assert slot_devices(params(gpu_slots=2), cuda_devices=0) == [None, None]
    assert slot_devices(params(gpu_slots=2), cuda_devices=8) == [0, 1]
    assert slot_devices(params(gpu_slots=[3, 5]), cuda_devices=8) == [3, 5]
    with pytest.raises(SlotsError, match=r"flow.gpu_slots: 4 needs CUDA device 3 but this machine has 2"):
        slot_devices(params(gpu_slots=4), cuda_devices=2)
    with pytest.raises(ParamsError):
        slot_devices(params(gpu_slots=[1]), cuda_devices=0)


def test_a_stage_process_sees_only_the_devices_it_holds() -> None:
    slots = DeviceSlots([0, 1], threads=4)
    with slots.hold(1) as first, slots.hold(1) as second:
        assert {first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        assert first["OMP_NUM_THREADS"] == second["OMP_NUM_THREADS"] == "4"
    with slots.hold(2) as both:
        assert both["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_one_slot_leaves_the_machine_as_it_is() -> None:
    assert not DeviceSlots([0], threads=None).side_by_side
    with DeviceSlots([0], threads=None).hold(8) as env:  # CP on 8 GPUs under one slot: sees every device
        assert env == {}
    with DeviceSlots([None], threads=1).hold(1) as env:
        assert env == {"OMP_NUM_THREADS": "1"}


def test_a_stage_waits_until_a_slot_is_given_back() -> None:
    slots, order = DeviceSlots([None, None], threads=1), []

    def hold_one(name: str, seconds: float) -> None:
        with slots.hold(1):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    with slots.hold(1):
        order.append("a in")
        waiter = threading.Thread(target=hold_one, args=("c", 0))
        with slots.hold(1):
            order.append("b in")
            waiter.start()
            time.sleep(0.3)
            order.append("b out")
        waiter.join(5)
        order.append("a out")
    assert order == ["a in", "b in", "b out", "c in", "c out", "a out"]


def test_cp_holds_a_slot_a_process_and_a_stage_that_needs_more_than_there_are_is_refused() -> None:
    cp = Params.model_validate({"cp": {"steps": 1, "learning_rate": 1e-3, "distributed": {"nproc_per_node": 4}}})
    assert devices_needed("cp", cp) == 4 and devices_needed("evaluate-cp", cp) == 1
    with pytest.raises(SlotsError, match=r"stage cp runs 4 processes.*gives 2 slots"):
        DeviceSlots([0, 1], threads=None).check("cp", 4)
    DeviceSlots([0], threads=None).check("cp", 4)  # one slot: the stage sees every device


def test_several_slots_on_the_cpu_share_the_cores_out_among_their_holders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    shared = DeviceSlots.for_run(params(gpu_slots=2))
    with shared.hold(1) as holder, shared.hold(0) as other:
        assert holder == {"OMP_NUM_THREADS": "4"} and other == {}  # a stage with no slot: torch's own choice
    assert DeviceSlots.for_run(params(gpu_slots=1)).threads is None
    fixed = DeviceSlots.for_run(params(gpu_slots=2, threads_per_slot=1))
    with fixed.hold(1) as holder, fixed.hold(0) as other:
        assert holder == other == {"OMP_NUM_THREADS": "1"}  # fixed: every stage process, to compare runs
