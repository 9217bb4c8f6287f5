"""The README opens with exactly two commands, and CI runs the second one."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_two_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("## "), "the commands must come before the first section"
    assert len(readme_commands()) == 2


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_table_lists_every_mixer():
    import rnnlab

    text = (ROOT / "README.md").read_text()
    missing = [m for m in rnnlab.available_mixers() if f"| `{m}` |" not in text]
    assert not missing, f"mixers without a row in the README model table: {missing}"


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written, so the examples cannot rot."""
    text = (ROOT / "README.md").read_text()
    import importlib.util

    blocks = [b.split("```", 1)[0] for b in text.split("```python")[1:]]
    assert blocks, "the README has no python example"
    for block in blocks:
        if "rnnlab.interop" in block and importlib.util.find_spec("transformers") is None:
            continue  # the hf extra's example (tests/interop skip likewise without transformers)
        exec(compile(block, "README.md", "exec"), {})
