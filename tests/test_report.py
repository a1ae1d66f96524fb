"""The docs' generated tables equal what ``python -m eval.report`` makes from ``results/``."""

import json
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


def test_a_prediction_table_has_a_column_per_horizon(tmp_path):
    rows = [{"method": m, "horizon": h, "psnr": p + h, "ssim": 0.5, "lpips": None, "n": 4}
            for m, p in (("world_model", 20.0), ("copy_last", 10.0)) for h in (1, 4)]  # fmt: skip
    (tmp_path / "prediction").mkdir()
    (tmp_path / "prediction" / "x.json").write_text(json.dumps({"rows": rows, "data": "d", "split": "test", "seed": 0}))
    table = report.prediction(tmp_path, "prediction/x.json").splitlines()
    assert table[0] == "| method | PSNR@1 | PSNR@4 | SSIM@1 | SSIM@4 |"
    assert table[2] == "| world model | 21.00 | 24.00 | 0.500 | 0.500 |"
    assert table[3].startswith("| copy last frame | 11.00")


def test_a_memory_table_has_a_column_per_context_and_the_revisit_split(tmp_path):
    def row(method, L, psnr, revisit, other):
        return {"method": method, "context": L, "psnr": psnr, "psnr_se": 0.5, "ssim": 0.6, "ssim_se": 0.01,
                "s_per_frame": 0.1, "revisit": {"psnr": revisit, "n": 3}, "non_revisit": {"psnr": other, "n": 2}}

    rows = [row(m, L, p + L / 100, p + 1, p - 1) for m, p in (("Base", 19.0), ("CoME", 20.0)) for L in (50, 512)]
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "x.json").write_text(json.dumps({"rows": rows}))
    table = report.memory_ablation(tmp_path, "memory/x.json").splitlines()
    assert table[0] == ("| method | PSNR L=50 | PSNR L=512 | SSIM L=512 | revisit L=512 | non-revisit L=50 | "
                        "s/frame L=512 |")  # fmt: skip
    assert table[2] == "| Base | 19.50 | 24.12 ± 0.50 | 0.600 | 20.00 | 18.00 | 0.100 |"
    assert len(table) == 4


def test_closed_loop_tables_pair_episodes_by_number(tmp_path):
    def ep(k, success, revisit):
        return {"episode": k, "success": success, "revisit": revisit}

    episodes = {"A": [ep(0, True, False), ep(1, True, True), ep(2, False, False), ep(3, True, True)],
                "B": [ep(1, False, True), ep(0, False, False), ep(3, True, True)]}  # B misses episode 2
    rows = [{"method": m, "success": 0.5, "revisit_success": 1.0, "nonrevisit_success": 0.0, "spl": 0.25,
             "collisions": 1.25, "s_per_decision": 2.0, "episodes": 4} for m in ("A", "B")]
    (tmp_path / "navigate").mkdir()
    (tmp_path / "navigate" / "x.json").write_text(json.dumps({"rows": rows, "replan_every": 8, "episodes": episodes}))
    table = report.paired_success(tmp_path, ["navigate/x.json"], [("A@8", "B@8"), ("A@8", "B@4")]).splitlines()
    # A − B on episodes 0, 1, 3: differences 1, 1, 0 -> mean 2/3, sd 0.577, se 0.333; revisits 1, 3: 1, 0
    assert table[2] == "| A every 8 − B every 8 | +0.67 ± 0.33 | +0.50 ± 0.50 | 3 (2) |" and len(table) == 3
    assert report.navigate_table(tmp_path, ["navigate/x.json"]).splitlines()[2] == \
        "| A | 8 | 0.50 | 1.00 | 0.00 | 0.25 | 1.2 | 2.00 | 4 |"


def test_a_costs_table_puts_imagined_and_true_views_side_by_side(tmp_path):
    rows = [{"key": "a", "distance": "cost a", "ate": 1.5, "spearman": 0.25},
            {"key": "a@sim", "distance": "cost a, true views", "ate": 1.25, "spearman": 0.5},
            {"key": "b", "distance": "cost b", "ate": 2.0, "spearman": 0.125}]  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps({"runs": [{"rows": rows}]}))
    lines = report.costs_table(tmp_path, "c.json", ("a", "b")).splitlines()
    assert lines[2] == "| cost a | 1.500 | 0.250 | 1.250 | 0.500 |"
    assert lines[3] == "| cost b | 2.000 | 0.125 | - | - |"


def test_a_contact_table_has_a_column_per_predictor(tmp_path):
    rows = [{"ckpt": c, "kind": k, "horizon": h, "psnr": p + h, "psnr_se": 0.25, "n": 3}
            for k in ("push", "free") for h in (1, 4) for c, p in (("copy_last", 30.0), ("wm", 20.0))]  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps({"rows": rows, "windows": {"push": 3, "free": 5}}))
    lines = report.contact_table(tmp_path, "c.json").splitlines()
    assert lines[0] == "| windows | ahead | copy_last | wm |"
    assert lines[2] == "| push (3) | 1 | 31.00 ± 0.25 | 21.00 ± 0.25 |" and lines[5].startswith("| free (5) | 4 |")


def test_a_paired_ate_table_differences_kept_samples(tmp_path):
    for method, errs in (("A", [[1.0, 0.5], [2.0, 0.5], [3.0, 1.0]]), ("B", [[2.0, 0.5], [2.0, 1.0], [5.0, 1.0]])):
        (tmp_path / "kept" / method).mkdir(parents=True)
        for i, e in enumerate(errs):
            (tmp_path / "kept" / method / f"{i}.json").write_text(json.dumps({"err": [e]}))
    lines = report.paired_ate(tmp_path, "kept", [("A", "B")]).splitlines()
    assert lines[2] == "| A − B | -1.000 ± 0.577 | -0.167 ± 0.167 | 3 |"  # ATE d = -1, 0, -2


def test_a_prediction_comparison_has_a_row_per_predictor(tmp_path):
    for name, p in (("a", 20.0), ("b", 19.0)):
        rows = [{"method": m, "horizon": h, "psnr": q + h, "ssim": 0.5, "lpips": None, "n": 4}
                for m, q in (("world_model", p), ("copy_last", 10.0)) for h in (1, 4)]  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))
    lines = report.prediction_compare(tmp_path, {"A": "a.json", "B": "b.json"}).splitlines()
    assert lines[0] == "| predictor | PSNR@1 | PSNR@4 | SSIM@1 | SSIM@4 |"
    assert lines[3] == "| B | 20.00 | 23.00 | 0.500 | 0.500 |" and lines[4].startswith("| copy last frame | 11.00 |")


def test_a_seeds_table_stacks_one_folder_per_seed_on_common_samples(tmp_path):
    """Seed runs kept apart (``--resume`` per seed) combine on the samples every run holds."""
    runs = {"s0": {"A": [[1.0, 0.5], [3.0, 0.5], [9.0, 9.0]], "B": [[2.0, 1.0], [2.0, 1.0]]},
            "s1": {"A": [[2.0, 0.5], [4.0, 1.5]], "B": [[2.0, 1.0], [4.0, 1.0]]}}  # fmt: skip
    for run, methods in runs.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "protocol.json").write_text(json.dumps({"metric_waypoint_spacing": 0.5}))
        for method, errs in methods.items():
            (tmp_path / run / method).mkdir()
            for i, e in enumerate(errs):
                (tmp_path / run / method / f"{i}.json").write_text(json.dumps({"err": [e]}))
    lines = report.seeds_table(tmp_path, ["s0", "s1"], ["A"]).splitlines()
    assert lines[2] == "| A | 2.500 ± 0.500 | 0.750 ± 0.250 | 1.250 | 2.000 / 3.000 | 2 × 2 |"  # sample 2 dropped
    lines = report.paired_seeds(tmp_path, ["s0", "s1"], [("A", "B")]).splitlines()
    assert lines[2] == "| A − B | +0.000 ± 0.500 | -0.250 ± 0.250 | 2 |"  # ATE per sample d = -0.5, +0.5
