"""`twistd --help` lists both plugins from an installed wheel, not only from
the source tree: catches a twisted/plugins folder left out of the package."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig


def test_wheel_install_lists_both_plugins(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), root], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = glob.glob(str(wheels / "natsalon-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                   check=True, timeout=300)
    assert (target / "twisted" / "plugins" / "natsalon_plugins.py").exists()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    # -S: no site processing, so the editable install's path entry for the
    # source tree is not read; dependencies come from the venv's site-packages.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    code = ("import sys; sys.argv = ['twistd', '--help']; import natsalon; print('FROM', natsalon.__file__);"
            "from twisted.scripts.twistd import run; run()")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert "FROM %s" % target in r.stdout, r.stdout + r.stderr
    assert "natsalon " in r.stdout and "natclient " in r.stdout, r.stdout + r.stderr
