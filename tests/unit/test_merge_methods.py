"""Several task vectors (task arithmetic, TIES, DARE) and a LoRA CP model."""
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.config import TaskVectorSource
from pipelines.config import MergeSettings
from pipelines.merge import methods
from pipelines.merge.methods import CombineOptions, combine, dare_linear, task_arithmetic, ties
from pipelines.merge.registry import METHODS
from tests.unit.merge_models import make_trio, merge, perturbed, reference, save, weights


def test_ties_trims_elects_and_averages_agreeing_values() -> None:
    d1, d2 = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([-3.0, 1.0, 1.0, 0.1])
    assert torch.equal(ties([d1.clone(), d2.clone()], [1.0, 1.0], CombineOptions(density=1.0)),
                       torch.tensor([-3.0, -2.0, 2.0, 0.3]))
    d2 = torch.tensor([-3.0, 1.0, 0.9, 0.1])  # keep 2 of 4: d1 -> [0,-2,3,0], d2 -> [-3,1,0,0]
    assert torch.equal(ties([d1, d2], [1.0, 1.0], CombineOptions(density=0.5)), torch.tensor([-3.0, -2.0, 3.0, 0.0]))


def test_dare_drops_and_rescales_reproducibly() -> None:
    delta = torch.linspace(0.1, 1.0, 1000)
    assert torch.equal(dare_linear([delta.clone()], [0.5], CombineOptions(1.0, 0, "w")), 0.5 * delta)
    once = dare_linear([delta.clone()], [1.0], CombineOptions(0.3, 0, "w"))
    kept = once != 0
    assert torch.allclose(once[kept], delta[kept] / 0.3)
    assert 0.25 < kept.float().mean() < 0.35
    assert torch.equal(once, dare_linear([delta.clone()], [1.0], CombineOptions(0.3, 0, "w")))
    assert not torch.equal(once, dare_linear([delta.clone()], [1.0], CombineOptions(0.3, 1, "w")))


def _with_domain_vector(tmp_path: Path) -> tuple[dict[str, Path], TaskVectorSource]:
    trio = make_trio(tmp_path)
    domain = save(perturbed(AutoModelForCausalLM.from_pretrained(trio["base"]), 7),
                  AutoTokenizer.from_pretrained(trio["base"]), tmp_path / "domain")
    return trio, TaskVectorSource(name="domain", base=str(trio["base"]), tuned=str(domain), ratio=0.5)


def test_task_arithmetic_with_a_second_vector(tmp_path: Path) -> None:
    trio, domain = _with_domain_vector(tmp_path)
    report = merge(trio, tmp_path / "merged", vectors=[domain])
    base, chat, cp, dom, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], Path(domain.tuned),
                                                        tmp_path / "merged"))
    assert report.vectors == ["chat", "domain"]
    for name in cp:
        assert torch.equal(merged[name], reference(cp[name], [(0.7, chat[name], base[name]),
                                                              (0.5, dom[name], base[name])])), name


def test_each_registered_method_is_implemented_and_the_only_ones_params_accept() -> None:
    for name, info in METHODS.items():
        assert callable(getattr(methods, name)) and info.reference, name
        assert MergeSettings(method=name).method == name
    with pytest.raises(ValueError, match="'task_arithmetic', 'ties' or 'dare_linear'"):
        MergeSettings(method="slerp")


@pytest.mark.parametrize("method", [name for name, info in METHODS.items() if info.whole_tensor])
def test_whole_tensor_methods_through_the_engine(tmp_path: Path, method: str) -> None:
    trio, domain = _with_domain_vector(tmp_path)
    merge(trio, tmp_path / "merged", vectors=[domain], method=method, density=0.5, seed=3)
    base, chat, cp, dom, merged = (weights(p) for p in (trio["base"], trio["chat"], trio["cp"], Path(domain.tuned),
                                                        tmp_path / "merged"))
    for name in cp:
        deltas = [chat[name].float() - base[name].float(), dom[name].float() - base[name].float()]
        combined = combine(method, deltas, [0.7, 0.5], CombineOptions(0.5, 3, name))
        assert torch.equal(merged[name], (cp[name].float() + combined).to(cp[name].dtype)), name
    # the plain sum differs: the method did something
    assert not torch.equal(merged["model.norm.weight"], reference(cp["model.norm.weight"], [
        (0.7, chat["model.norm.weight"], base["model.norm.weight"]),
        (0.5, dom["model.norm.weight"], base["model.norm.weight"])]))


def test_task_arithmetic_sums_in_place() -> None:
    assert torch.equal(task_arithmetic([torch.ones(3), torch.full((3,), 2.0)], [0.5, 2.0]), torch.full((3,), 4.5))


def test_lora_cp_is_folded_into_base_before_the_chat_vector(tmp_path: Path) -> None:
    trio = make_trio(tmp_path)
    torch.manual_seed(5)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(trio["base"]),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; move it so the adapter changes the weights
            parameter.data.normal_(0, 0.1)
    lora_dir = tmp_path / "cp-lora"
    adapter.save_pretrained(lora_dir)
    folded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trio["base"]), lora_dir).merge_and_unload()
    cp = {k: v.detach().clone() for k, v in folded.state_dict().items()}

    merge(trio | {"cp": lora_dir}, tmp_path / "merged")
    base, chat, merged = weights(trio["base"]), weights(trio["chat"]), weights(tmp_path / "merged")
    assert merged.keys() == base.keys()
    for name in merged:
        assert torch.equal(merged[name], reference(cp[name], [(0.7, chat[name], base[name])])), name
    assert not torch.equal(cp["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cp-folded")] == []
