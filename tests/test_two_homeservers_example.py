"""The project's main job, ``examples/two_homeservers.py``, runs and exits 0."""

import subprocess
import sys

from phoenix_ref.shared import REPO_ROOT


def test_two_homeservers_example_runs():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "two_homeservers.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "discovered b.example via well_known" in proc.stdout
    assert "refused (credential_revoked" in proc.stdout
