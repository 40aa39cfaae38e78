"""`chatgraft run --set key=value`: overrides applied and validated in memory; params.yaml is edited in place only
when asked, and only when the result is valid."""
import shutil
from pathlib import Path

import pytest
import yaml

from flows.params_file import apply_overrides, with_overrides
from pipelines.config import ParamsError

TEXT = "# my comment\nmerge:\n  ratios: [0.5, 1.0]  # sweep\n  embedding_rows: specials\n"


def test_override_is_written_and_comments_kept(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(TEXT)
    apply_overrides(path, ["merge.ratios=[0.7, 1.0]", "merge.embedding_rows=overlap"])
    assert yaml.safe_load(path.read_text())["merge"] == {"ratios": [0.7, 1.0], "embedding_rows": "overlap"}
    assert "# my comment" in path.read_text()


@pytest.mark.parametrize("override, message", [
    ("merge.ratios=[1]", r"merge\.ratios: .*floats"),
    ("merge.embedding_rows=sometimes", r"merge\.embedding_rows"),
    ("nope.ratio=1.0", "no section 'nope'"),
    ("merge.ratios", "expected KEY.PATH=VALUE"),
])
def test_invalid_override_names_the_key_and_leaves_the_file_alone(tmp_path: Path, override: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(TEXT)
    with pytest.raises(ParamsError, match=message):
        apply_overrides(path, [override])
    assert path.read_text() == TEXT


def test_override_changes_only_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", path)
    before = path.read_text().splitlines()
    apply_overrides(path, ["eval.lm_eval_tasks=[target_facts]"])
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and len(changed) == 1
    assert changed[0][1].startswith("  lm_eval_tasks: [target_facts]")


def test_overrides_are_held_in_memory_until_written(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(TEXT)
    wanted = with_overrides(path, ["merge.ratios=[0.7, 1.0]"])
    assert wanted.params.merge.ratios == [0.7, 1.0] and "# sweep" in wanted.text
    assert path.read_text() == TEXT  # checked, not written: a run refused later leaves the file as it was
    wanted.write()
    assert path.read_text() == wanted.text


def test_no_overrides_validate_the_file_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(TEXT)
    wanted = with_overrides(path, [])
    assert wanted.text == wanted.before == TEXT and wanted.params.merge.embedding_rows == "specials"
    path.unlink()
    wanted.write()
    assert not path.exists()
    with pytest.raises(ParamsError, match="cannot read it"):
        with_overrides(path, [])
