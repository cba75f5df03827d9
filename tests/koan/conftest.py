"""tests/koan: hostkv-koan is only ever installed into throw-away venvs (tests/koan/koan_env.py).

The autouse guard fails a test that leaves hostkv_koan.pth in the project's .venv, which every
other test and engineer shares."""
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _project_venv_untouched():
    pattern = os.path.join(REPO, ".venv", "lib", "python3*", "site-packages", "hostkv_koan.pth")
    assert not glob.glob(pattern), "hostkv_koan.pth is in the project venv before the test"
    yield
    leaked = glob.glob(pattern)
    for path in leaked:
        os.unlink(path)
    assert not leaked, "the test installed hostkv-koan into the project venv: %s" % leaked
