"""benchmarks.subset_reader: its ideal reader answers every question from the whole context (the
reader is right about the tasks' answers), and a kept set of a twentieth of the context keeps a
needle about a twentieth of the time."""

import json

from benchmarks import subset_reader


def test_reader_is_right_on_whole_contexts_and_loses_needles_to_small_subsets(tmp_path):
  table = subset_reader.main(["--length", "1024", "--contexts", "6", "--out", str(tmp_path)])
  assert set(table) == {"niah_single", "common_words", "frequent_words"}
  for row in table.values():
    assert row["local c=1"] == row["random blocks c=1"] == 1.0
  assert table["niah_single"]["local c=20"] < 0.2
  assert json.loads((tmp_path / "subset_reader_cpu.json").read_text())["right"] == table
