import pkgutil
import subprocess
import sys

import pipeline


def test_pipeline_never_imports_ray():
    modules = [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 8
