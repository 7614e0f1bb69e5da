"""Shared set-up of the conformance tests: where edgec, llama.cpp's tools, the
fixtures and the real models are. A missing prerequisite fails the test with
what to run; nothing is skipped silently."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGEC_CACHE", Path.home() / ".cache" / "edgec"))
SETUP_HINT = "run `bash scripts/setup-env.sh`, then `source $EDGEC_CACHE/env.sh` (EDGEC_CACHE defaults to ~/.cache/edgec)"
FETCH_HINT = "run `bash fixtures/fetch-real.sh` (after scripts/setup-env.sh)"


def need(condition: bool, message: str) -> None:
    """Fails the test (never skips it) when a prerequisite is missing."""
    if not condition:
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def edgec_bin() -> Path:
    path = Path(os.environ.get("EDGEC_BIN", REPO / "target" / "debug" / "edgec"))
    need(path.is_file() and os.access(path, os.X_OK), f"edgec binary {path} is missing: run `cargo build --bin edgec`")
    return path


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    value = os.environ.get("LLAMA_BIN")
    need(bool(value), f"LLAMA_BIN (the folder of llama.cpp's tools) is not set: {SETUP_HINT}")
    path = Path(value)
    need(path.is_dir(), f"LLAMA_BIN={path} is not a folder: {SETUP_HINT}")
    return path


def llama_tool(llama_bin: Path, name: str) -> Path:
    tool = llama_bin / name
    need(tool.is_file() and os.access(tool, os.X_OK), f"{tool} is missing: {SETUP_HINT}")
    return tool


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return REPO / "fixtures"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return CACHE / "models"


def run(cmd: list, timeout: float = 600, check_exit: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; a failure fails the test with its output (unless
    `check_exit` is false, for commands whose exit code is the point)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, **kwargs)
    if check_exit and proc.returncode != 0:
        out = proc.stdout.decode("utf-8", "replace")[-2000:]
        err = proc.stderr.decode("utf-8", "replace")[-4000:]
        pytest.fail(
            f"`{' '.join(map(str, cmd))}` exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}",
            pytrace=False,
        )
    return proc


def which(name: str) -> str | None:
    return shutil.which(name)
