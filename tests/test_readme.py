"""README.md is the manual: its commands name scripts, flags and files that exist (the dry-runs they
plan with run in test_configs.py), its links resolve, and it stays short."""
import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """Every command of the README's code blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


@functools.cache
def help_text(script: str, *subcommand: str) -> str:
    return subprocess.run([sys.executable, script, *subcommand, "--help"], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=120).stdout


def _script_and_subcommand(command: list[str]) -> tuple[str, tuple[str, ...]]:
    script = next(word for word in command if word.endswith(".py"))
    words = command[command.index(script) + 1:]
    return script, tuple(words[:1]) if words and not words[0].startswith("-") else ()


def _usage(command: list[str]) -> str:
    script, subcommand = _script_and_subcommand(command)
    return help_text(script, *subcommand)


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 150
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / link).exists(), link
    for name in re.findall(r"`(configs/[\w.-]+)`|(configs/[\w.-]+\.yaml)", README):
        assert (ROOT / (name[0] or name[1])).is_file(), name


def test_readme_commands_name_real_scripts_and_flags():
    checked = 0
    commands = [c for c in readme_commands() if c[:3] != ["python", "-m", "pytest"] and c[:2] != ["pip", "install"]]
    with ThreadPoolExecutor(2) as pool:  # the --help texts, two Python start-ups at a time (cached below)
        list(pool.map(lambda command: _usage(command), commands))
    for command in readme_commands():
        if command[:3] == ["python", "-m", "pytest"] or command[:2] == ["pip", "install"]:
            continue
        script, subcommand = _script_and_subcommand(command)
        assert (ROOT / script).is_file(), script
        words = command[command.index(script) + 1:]
        flags = [w.split("=")[0] for w in words if w.startswith("--")]
        usage = _usage(command)
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", usage), f"{script} does not take {flag}"
        for word in command:
            if word.startswith(("configs/", "ds_configs/")):
                assert (ROOT / word).is_file(), word
        checked += 1
    assert checked >= 9
