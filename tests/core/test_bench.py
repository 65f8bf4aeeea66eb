import json

import pmdrop.bench


def test_bench_prints_ratios_and_bytes_for_every_exact_variant(tmp_path, capsys):
    out = tmp_path / "bench.json"
    pmdrop.bench.main(["--shape", "64,33", "--pairs", "2", "--dtype", "fp32", "bf16", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["provenance"]["device"].startswith("cpu") and "commit" in report["provenance"]
    rows = {(r["variant"], r["dtype"]): r for r in report["rows"]}
    assert set(rows) == {(v, d) for v in ("baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit", "seeded")
                         for d in ("fp32", "bf16")}
    assert rows["pmdrop", "fp32"]["saved_bytes_per_element"] == 1 / 8
    assert rows["pmdrop_4bit", "bf16"]["saved_bytes_per_element"] == 1 / 4
    assert rows["baseline", "fp32"]["baseline_saved_bytes_per_element"] == 4
    assert rows["baseline", "bf16"]["baseline_saved_bytes_per_element"] == 2
    assert all(r["fwd_bwd_ratio"] > 0 for r in rows.values())
    assert "pmdrop_nocache" in printed and "x" in printed


def test_bench_rejects_an_unknown_variant_before_timing(capsys):
    import pytest

    with pytest.raises(ValueError, match="unknown dropout variant 'nope'"):
        pmdrop.bench.main(["--shape", "8", "--variants", "nope"])
