"""The run contract (experiments/record.py): records round-trip, old files load, unknown versions fail in one sentence,
results are strict JSON, and the import structure around it holds (no circle, the analysis sees only the contract)."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import record
from experiments.record import MaxfitSearch, Measurement, RunRecord, Status

from .conftest import B_FIELDS, REPO_ROOT


def _training_record(**changes) -> RunRecord:
    config = {"seed": 1, "experiment_name": "demo", "trainer": {"bitflip_fraction": 0.0}, "runs_root": "runs"}
    fields = dict(experiment="demo", model="tinybert", dataset="synthetic_pairs", variant="pmdrop", seed=1,
                  axes=record.axes_of(config), status=Status.OK, git_commit="abc", command="python run.py",
                  started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:09+00:00", wall_time_s=9.0,
                  config=config, run_dir="/runs/demo", measurement=Measurement(**B_FIELDS, world_size=1))
    return RunRecord(**(fields | changes))


def test_a_record_round_trips_through_results_json(tmp_path):
    for run in (_training_record(),
                _training_record(status=Status.FAILED, error="RuntimeError: boom", traceback="...", measurement=None),
                _training_record(measurement=Measurement(device="cpu", world_size=1, batch_size=19, metrics={},
                                                         maxfit=MaxfitSearch("batch_size", 19, "saved_bytes", 2**20,
                                                                             None, 1, [[1, True, 7]])))):
        record.write_record(tmp_path, run)
        written = json.loads((tmp_path / record.RESULTS_FILE).read_text())
        assert written["schema_version"] == record.SCHEMA_VERSION and written["status"] == str(run.status)
        assert record.read_record(tmp_path / record.RESULTS_FILE) == run


def test_results_json_is_flat_and_keeps_every_field_of_version_1(tmp_path):
    record.write_record(tmp_path, _training_record())
    written = json.loads((tmp_path / record.RESULTS_FILE).read_text())
    assert B_FIELDS.keys() <= written.keys() and written["axes"] == {"bitflip_fraction": 0.0}
    assert "traceback" not in written and "nonfinite" not in written


def test_a_nonfinite_value_is_written_as_null_and_named(tmp_path):
    run = _training_record()
    run.measurement.final_loss = math.nan
    record.write_record(tmp_path, run)
    text = (tmp_path / record.RESULTS_FILE).read_text()
    assert "NaN" not in text and json.loads(text)["final_loss"] is None
    assert record.read_record(tmp_path / record.RESULTS_FILE).nonfinite == {"final_loss": "nan"}


def _version_1_file(tmp_path: Path, **changes) -> Path:
    """A results.json as the runner wrote it before the contract had a version (e.g. behind results/runs.csv)."""
    fields = {"experiment": "composability-bf16-ws2", "model": "tinybert", "dataset": "synthetic_pairs",
              "variant": "pmdrop", "seed": 0, "status": "ok", "error": None, "started_at": "2026-01-01T00:00:00+00:00",
              "finished_at": "2026-01-01T00:00:09+00:00", "wall_time_s": 9.0, "git_commit": "abc",
              "torch_version": "2.14.1", "transformers_version": "5.0", "timm_version": "1.0", "hostname": "h",
              "command": "python run.py", "overrides": [], "run_dir": "/runs/x",
              "config": {"composability": {"setting": "bf16"}, "trainer": {"bitflip_fraction": 0.0}},
              **B_FIELDS, "world_size": 2, "param_sha256": "00"}
    path = tmp_path / record.RESULTS_FILE
    path.write_text(json.dumps(fields | changes))
    return path


def test_a_version_1_file_reads_as_the_same_record_with_its_axes_from_its_config(tmp_path):
    run = record.read_record(_version_1_file(tmp_path))
    assert run.schema_version == record.SCHEMA_VERSION and run.status == Status.OK
    assert run.axes == {"composability": "bf16", "ranks": 2, "bitflip_fraction": 0.0}
    assert run.measurement.saved_mask_bytes == B_FIELDS["saved_mask_bytes"] and run.get("world_size") == 2
    failed = record.read_record(_version_1_file(tmp_path, status="failed", error="RuntimeError: boom",
                                                **dict.fromkeys(B_FIELDS)))
    assert failed.status == Status.FAILED and failed.error == "RuntimeError: boom"


def test_a_file_of_an_unknown_version_fails_in_one_sentence_naming_it(tmp_path):
    path = _version_1_file(tmp_path, schema_version=99)
    with pytest.raises(record.RecordVersionError) as raised:
        record.read_record(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "schema_version 99 is not one this code reads (versions 1, 2)" in message


def test_a_status_the_contract_does_not_know_is_refused(tmp_path):
    with pytest.raises(record.RecordError, match=r"status 'done' is not one of 'ok', 'failed'"):
        record.read_record(_version_1_file(tmp_path, status="done"))


def test_the_runner_leaves_a_newer_record_alone_and_fails_the_run(launch, training, runs_root, capsys):
    run_dir = runs_root / "default" / "tinybert" / "synthetic_pairs" / "baseline" / "seed0"
    run_dir.mkdir(parents=True)
    newer = _version_1_file(run_dir, schema_version=99)
    before = newer.read_text()
    assert launch("variant=baseline") == 1
    assert training.calls == [] and newer.read_text() == before
    assert "schema_version 99 is not one this code reads" in capsys.readouterr().out


def test_the_runner_writes_the_axes_of_the_run(launch, training, runs_root):
    assert launch("trainer.bitflip_fraction=0.05", "variant=pmdrop") == 0
    run = record.read_record(runs_root / "default/tinybert/synthetic_pairs/pmdrop/seed0" / record.RESULTS_FILE)
    assert run.axes == {"bitflip_fraction": 0.05} and run.schema_version == record.SCHEMA_VERSION


def test_run_defining_leaves_out_filing_keys_and_the_named_axis():
    config = {"experiment_name": "a", "runs_root": "r", "force": True, "logger": {"kind": "disabled"},
              "seed": 0, "trainer": {"bitflip_fraction": 0.05, "steps": 3}}
    assert record.run_defining(config, leave_out=("trainer.bitflip_fraction",)) == {"seed": 0,
                                                                                    "trainer": {"steps": 3}}
    assert config["trainer"]["bitflip_fraction"] == 0.05  # the config itself is left as it was


# ----------------------------------------------------------------------------- the import structure


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` (and the package itself) that ``path`` imports anywhere, lazily inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package of ``path``
                base = path.parent.name if node.level == 1 else None
                module = ".".join(filter(None, [base, node.module]))
            else:
                module = node.module or ""
            if module == package or module.startswith(f"{package}."):
                names = [f"{module}.{alias.name}" for alias in node.names] if module == package else [module]
                found.update(names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == package)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor):], successor] if successor in path else [node, successor]
            if successor not in state and (found := visit(successor, [*path, successor])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


@pytest.mark.parametrize("package", ["pmdrop", "experiments", "scripts"])
def test_the_modules_of_each_layer_import_each_other_without_a_circle(package):
    modules = {path.stem: path for path in (REPO_ROOT / package).glob("*.py") if path.stem != "__init__"}
    graph = {name: {imported.split(".")[1] for imported in _imports(path, package) if "." in imported} - {name}
             for name, path in modules.items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_the_analysis_imports_only_the_contract_of_the_harness():
    for path in sorted((REPO_ROOT / "scripts").glob("*.py")):
        assert _imports(path, "experiments") <= {"experiments.record"}, path.name


def test_the_contract_is_torch_free():
    code = ("import sys, experiments.record; heavy = {'torch', 'hydra', 'omegaconf', 'pandas'} & set(sys.modules); "
            "print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
