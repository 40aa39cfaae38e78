"""`chatgraft run --set key=value` edits params.yaml in place, only when the result is valid."""
from pathlib import Path

import pytest
import yaml

from flows.params_file import apply_overrides
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
