import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' derivation cache out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DERIVCHECK_CACHE_DIR", str(tmp_path_factory.mktemp("derivcheck-cache")))
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache-home")))  # the MAC key, too
    mp.delenv("DERIVCHECK_RULES", raising=False)
    yield
    mp.undo()


pytest_plugins = ["pytester"]
