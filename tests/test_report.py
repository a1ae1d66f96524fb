"""The docs' generated tables equal what ``python -m eval.report`` makes from ``results/``."""

import shutil

from eval import report


def test_the_docs_tables_match_their_results():
    assert report.main(["--check"]) == 0


def test_a_changed_number_is_caught(tmp_path, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(report.ROOT / "docs", docs, ignore=shutil.ignore_patterns("*.png", "*.gif"))
    text = (docs / "results.md").read_text()
    start = text.index("<!-- report:seeded-val -->")
    line = text.index("| NWM |", start)
    tampered = text[:line] + text[line:].replace("1.407", "1.207", 1)
    assert tampered != text
    (docs / "results.md").write_text(tampered)
    assert report.main(["--check", "--docs", str(docs)]) == 1
    assert "differ from results/" in capsys.readouterr().out
    assert report.main(["--docs", str(docs)]) == 0 and (docs / "results.md").read_text() == text  # regenerated


def test_an_unknown_block_is_one_line(tmp_path, capsys):
    (tmp_path / "x.md").write_text("<!-- report:nope -->\n<!-- /report -->\n")
    assert report.main(["--check", "--docs", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
