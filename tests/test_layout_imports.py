"""The package shape promises: the codec loads no reactor and no crypto,
``import natsalon`` is cheap, and the twistd plugins name importable taps."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set:
    code = "import sys; %s; print('\\n'.join(sorted(sys.modules)))" % statement
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["natsalon.stun", "natsalon.stun.client", "natsalon.wire", "natsalon.net.hostport"])
def test_sans_io_modules_load_no_reactor_and_no_crypto(module):
    loaded = _loaded_after("import " + module)
    assert module in loaded
    assert not {m for m in loaded if m == "twisted.internet" or m.startswith("twisted.internet.")}
    assert not {m for m in loaded if m == "cryptography" or m.startswith("cryptography.")}


def test_import_natsalon_is_cheap_and_connect_is_lazy():
    loaded = _loaded_after("import natsalon")
    assert "natsalon.client.api" not in loaded
    assert "twisted.internet" not in loaded
    loaded = _loaded_after("import natsalon; natsalon.connect")
    assert "natsalon.client.api" in loaded


def test_connect_shortcut_is_the_api_function():
    import natsalon
    from natsalon.client.api import connect

    assert natsalon.connect is connect
    with pytest.raises(AttributeError):
        natsalon.no_such_thing


def test_plugins_name_importable_tap_modules():
    import importlib

    sys.path.insert(0, ".")
    from twisted.plugins import natsalon_plugins

    for maker in (natsalon_plugins.natsalon, natsalon_plugins.natclient):
        tap = importlib.import_module(maker.module)
        assert callable(tap.makeService) and tap.Options


_NEWER_THAN_39 = {"slots", "kw_only", "match_args"}  # dataclass() keywords added in Python 3.10


def test_the_code_stays_python_39_for_pypy():
    """pyproject says Python >= 3.9, and the benchmarks document PyPy 3.9
    as a runtime: every module parses as 3.9 and asks no dataclass option
    that 3.9 lacks (``@dataclass(slots=True)`` once stopped the salon from
    starting on PyPy)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "natsalon"
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Match):
                found.append("%s:%d match" % (path.name, node.lineno))
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "dataclass":
                found += ["%s:%d dataclass(%s=)" % (path.name, node.lineno, k.arg)
                          for k in node.keywords if k.arg in _NEWER_THAN_39]
    assert len(list(root.rglob("*.py"))) > 50 and found == []
