import atexit
import os
import shutil
import tempfile

# Nothing in the tests may reach a hub or W&B's servers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Inductor's on-disk caches key a custom op by its name, not by its fake or backward implementation
# (pytorch/pytorch#144344): a cache left by an older pmdrop would replay code compiled against the old
# op. Every test process compiles into a fresh cache of its own.
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="pmdrop-tests-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)
