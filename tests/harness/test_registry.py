"""The core's variant registry is the one source of variant names: the variant configs, the sweep lists and the
analysis' mask-storage model agree with it, and a variant registered in pmdrop reaches them without another edit."""

import pytest
import yaml
from omegaconf import OmegaConf

import pmdrop
from experiments.sweep import sweep_variants
from pmdrop import variants
from scripts.memory_model import mask_storage

from .conftest import CONF_DIR

SWEEP_LISTS = sorted([*CONF_DIR.glob("experiment/*.yaml"), *CONF_DIR.glob("campaign/**/*.yaml")])


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test (which may register variants of its own)."""
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))


def test_the_variant_configs_are_the_registry():
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in (CONF_DIR / "variant").glob("*.yaml")}
    assert sorted(configs) == sorted(pmdrop.variant_names())
    assert all(config == {"name": name} for name, config in configs.items())  # a name and nothing else


def _sweep_list(path):
    """The ``variant`` sweep list of a config, resolved (None when it sweeps no variants)."""
    listed = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("sweeper", {}).get("params", {})
    if "variant" not in listed:
        return None
    return OmegaConf.create({"variant": listed["variant"]}).variant.split(",")


def test_every_sweep_list_names_registered_variants():
    lists = {path.relative_to(CONF_DIR).as_posix(): _sweep_list(path) for path in SWEEP_LISTS}
    lists = {name: listed for name, listed in lists.items() if listed is not None}
    assert len(lists) >= 8  # the sweeps of conf/experiment and conf/campaign that list variants
    for name, listed in lists.items():
        assert set(listed) <= set(pmdrop.variant_names()), f"{name} sweeps variants the registry lacks: {listed}"
        assert len(set(listed)) == len(listed), f"{name} lists a variant twice"


def test_the_registry_sweep_lists_are_all_variants_or_the_exact_ones():
    names = pmdrop.variant_names()
    assert sweep_variants("all").split(",") == names
    assert sweep_variants("exact").split(",") == [name for name in names if pmdrop.get_variant(name).bit_exact]
    assert "pmdrop_fused" not in sweep_variants("exact") and "seeded" in sweep_variants("exact")
    with pytest.raises(ValueError, match=r"\$\{variants:fast\} is not a variant set; valid: all, exact"):
        sweep_variants("fast")


def test_a_registered_variant_joins_the_sweeps_and_the_memory_model(registry):
    pmdrop.register_variant(pmdrop.packed_variant(2))
    assert "pmdrop_k2" in sweep_variants("exact").split(",")
    storage = mask_storage("pmdrop_k2", "cpu")
    assert storage.bytes_per_call(1001, 4) == 501


def test_the_memory_model_knows_how_every_registered_variant_stores_its_mask():
    for name in pmdrop.variant_names():
        for device_type in ("cpu", "cuda"):
            mask_storage(name, device_type)
    assert mask_storage("pmdrop", "cpu").bytes_per_call(1001, 4) == 126  # ceil(1001 / 8)
    assert mask_storage("pmdrop_4bit", "cuda").bytes_per_call(1001, 2) == 251
    assert mask_storage("baseline", "cpu").bytes_per_call(1001, 4) == 4004  # torch on CPU: noise in the input dtype
    assert mask_storage("baseline", "cuda").bytes_per_call(1001, 4) == 1001  # a bool mask
    assert mask_storage("seeded", "cuda").bytes_per_call(1001, 4) == 16  # the Philox state
    assert mask_storage("pmdrop_fused", "cuda").bytes_per_call(1001, 4) == 126
    assert mask_storage("seeded_fused", "cuda").bytes_per_call(1001, 4) == 0


def test_a_sweep_over_the_registry_runs_every_exact_variant(launch, training, runs_root):
    assert launch("-m", "experiment=demo", "seed=0") == 0
    exact = [name for name in pmdrop.variant_names() if pmdrop.get_variant(name).bit_exact]
    assert sorted(training.calls) == sorted((name, 0) for name in exact)
