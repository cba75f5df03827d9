"""Fixtures shared by tests/packaging."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def rpm_home(tmp_path_factory):
    """Debian's rpm keeps its database in ~/.rpmdb and creates it on any query: give it a temp HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()
