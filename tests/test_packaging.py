"""The package is the installed one wherever Python starts: from the directory that holds a clone
named ``trimaran``, ``import trimaran`` must not find the clone's folder (an empty namespace
package) instead (issue 14). The src layout guarantees it; this test keeps it so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_from_the_directory_that_holds_the_clone_gets_the_package(tmp_path: Path) -> None:
    (tmp_path / "trimaran").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import trimaran; print(trimaran.__file__); print(trimaran.connect.__name__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    file, name = out.stdout.split()
    assert Path(file).resolve() == ROOT / "src" / "trimaran" / "__init__.py" and name == "connect"
