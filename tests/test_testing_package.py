"""torch stays a dev-only dependency: only seisfuse.testing imports it, and without torch that
module says which extra to install instead of failing deep inside a reference."""

import ast
import subprocess
import sys
from pathlib import Path

import seisfuse

PACKAGE = Path(seisfuse.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_seisfuse_testing_imports_torch():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "testing"):
            continue
        for name in _imported_modules(path):
            root = name.split(".")[0]
            if root == "torch" or name == "seisfuse.testing" or name.startswith("seisfuse.testing."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    assert not offenders, offenders


def test_without_torch_the_import_names_the_dev_extra():
    # sys.modules["torch"] = None makes `import torch` raise ImportError, as on an install without it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n"
        "    import seisfuse.testing.mae_torch\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert "pip install 'seisfuse[dev]'" in out.stdout, out.stdout + out.stderr


def test_with_torch_the_references_and_timing_import():
    from seisfuse.testing import mae_torch, timing

    assert hasattr(mae_torch, "MaskedAutoencoderViT")
    times = timing.alternate_rounds({"a": lambda: None, "b": lambda: None}, rounds=3, steps=2)
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}
    assert all(rate > 0 for rate in timing.median_rates(times).values())
