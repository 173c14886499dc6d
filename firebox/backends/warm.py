"""What a template's saved state (a microVM's snapshot, a gVisor checkpoint) holds imported.

A sandbox restored from it answers its first python cell without importing the data stack:
the imports were paid once, when the state was made.
"""

from __future__ import annotations

from pathlib import Path

# the python template's warm context imports these before its state is saved
WARM_IMPORTS = "numpy,pandas,matplotlib,matplotlib.pyplot"


def warm_imports(rootfs: Path) -> str:
    """``WARM_IMPORTS`` if the image has what they import (the python template, and templates
    built on it), else nothing."""
    packages = rootfs / "usr" / "lib" / "python3" / "dist-packages"
    names = ("IPython", "numpy", "pandas", "matplotlib")
    return WARM_IMPORTS if all((packages / name).is_dir() for name in names) else ""
