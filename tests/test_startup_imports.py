"""`transferlab --help` and the parsers of every command start without torch, timm or matplotlib.

Each command imports its heavy modules in the function that runs it; a module-level import in
any command (they are all imported to build the parser) would cost every invocation seconds.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "matplotlib", "onnxruntime")


def test_building_the_parser_imports_no_heavy_module() -> None:
    code = ("import sys; from transferlab.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"
