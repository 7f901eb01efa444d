"""The README's promises: its Python example runs, and CI runs exactly its test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    test_cmd = next(line.split("#")[0].strip() for line in commands.splitlines() if "test" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in [line.strip() for line in ci.splitlines()]
