"""The README's first set-up command ends in a `python -c` snippet: it must run with nothing downloaded."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_main_command_runs_offline():
    lines = [l[6:] for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("    $ ")]
    assert len(lines) == 2, "the README must show exactly two set-up commands"
    snippet = re.search(r'python -c "(.*)"$', lines[0]).group(1)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "the snippet printed no generated text"
    assert "pytest" in lines[1]          # the second is the test command that .ci/run reads and runs
