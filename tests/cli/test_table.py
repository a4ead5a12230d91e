import pytest

from twostep.table import table_lines


def test_columns_fit_their_widest_cell_names_left_numbers_right():
    lines = table_lines(("name", "n"), [("a", "1,000"), ("longer", "7")], left_columns=1)
    assert lines == ["name        n",
                     "a       1,000",
                     "longer      7"]


def test_a_row_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="a row of 1 cells under a header of 2"):
        table_lines(("a", "b"), [("x",)])
