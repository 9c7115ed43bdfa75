"""utils/markdown.py: the one markdown table layout of reports and benchmarks."""
import pytest

from utils.markdown import markdown_table


def test_table_layout():
    assert markdown_table(["metric", "gt"], [["FID", 0.5], ["Diversity", "9.5"]]) == [
        "| metric | gt |", "|---|---|", "| FID | 0.5 |", "| Diversity | 9.5 |"]


def test_row_of_wrong_width_is_refused_naming_the_row():
    with pytest.raises(ValueError, match="row 1 has 1 cells, the header 2"):
        markdown_table(["a", "b"], [[1, 2], [3]])
