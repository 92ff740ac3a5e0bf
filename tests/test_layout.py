"""The library never imports kfp (DESIGN §2); components and pipelines install inside the namespace."""

import importlib.util
import subprocess
import sys

LIBRARY_MODULES = [
    "sidreasoner.config", "sidreasoner.steps", "sidreasoner.io",
    "sidreasoner.data.download", "sidreasoner.data.preprocess", "sidreasoner.data.demo",
    "sidreasoner.sid.embed", "sidreasoner.sid.quantize", "sidreasoner.teacher.corpus", "sidreasoner.components.runtime",
]


def test_library_does_not_import_kfp():
    code = "import sys\n" + "".join(f"import {m}\n" for m in LIBRARY_MODULES) + "print('kfp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_no_generic_top_level_packages():
    assert importlib.util.find_spec("sidreasoner.components") is not None
    assert importlib.util.find_spec("sidreasoner.pipelines") is not None
    for generic in ("components", "pipelines"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or "site-packages" not in str(spec.origin or "")
