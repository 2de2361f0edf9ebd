"""The wheel as an operator installs it: one import package, all files, beside PyPI's watchdog.

These build the real wheel from this checkout and install it with pip into fresh virtual
environments (PyPI is reached for the dependencies and for PyPI's ``watchdog``).
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder → where its files land in the wheel (pyproject.toml's package-dir).
MAPPED = {
    "watchdog": "bup_watchdog",
    "checks": "bup_watchdog/checks",
    "repairs": "bup_watchdog/repairs",
    "dashboards": "bup_watchdog/dashboards",
    "deploy": "bup_watchdog/deploy",
    "docs": "bup_watchdog/docs",
    "examples": "bup_watchdog/examples",
}


def run(argv: list[str], cwd: Path = Path("/")) -> subprocess.CompletedProcess[str]:
    """Run away from the checkout: ``python -c`` would find its ``watchdog/`` folder first."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, cwd=cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel, and the copy of the checkout it was built from."""
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the files git knows (tracked or not ignored), so build/ and egg-info
    # stay out of the checkout (the test suite writes nothing under version control).
    src = out / "src"
    tracked = run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT).stdout.split(
        "\0"
    )
    for name in filter(None, tracked):
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            target.write_bytes((ROOT / name).read_bytes())
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(src)]
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = out.glob("bup_watchdog-*.whl")
    return found, src


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, Path]) -> Path:
    return built[0]


def test_the_wheel_installs_one_top_level_import_package_named_bup_watchdog(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {PurePosixPath(n).parts[0] for n in names if ".dist-info/" not in n}
    assert tops == {"bup_watchdog"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["bup_watchdog"]


def test_the_wheel_holds_every_tracked_module_and_operations_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.split()
    missing = []
    for name in tracked:
        folder, _, rest = name.partition("/")
        if folder not in MAPPED or not rest:
            continue
        if folder == "dashboards" and rest.endswith(".py") and rest != "__init__.py":
            continue  # the dashboards' generator is a development tool
        if f"{MAPPED[folder]}/{rest}" not in names:
            missing.append(name)
    assert missing == [], f"not in the wheel (add the folder to pyproject.toml): {missing}"


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


@pytest.fixture(scope="module")
def shared_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield _venv(tmp_path_factory.mktemp("shared") / "venv")


USE_PYPI_WATCHDOG = (
    "from watchdog.observers import Observer; from watchdog.events import FileSystemEventHandler; "
    "import watchdog.version; print('watchdog', watchdog.version.VERSION_STRING)"
)


def _both_work(bin_: Path) -> None:
    assert "Usage: bup-watchdog" in _ok(run([str(bin_ / "bup-watchdog"), "--help"]))
    assert _ok(run([str(bin_ / "python"), "-c", USE_PYPI_WATCHDOG])).startswith("watchdog ")


def test_bup_watchdog_and_pypi_watchdog_share_a_venv_in_either_order_and_survive_uninstalls(
    wheel: Path, shared_venv: Path
) -> None:
    pip = [str(shared_venv / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    # PyPI's watchdog first, then ours.
    _ok(run([*pip, "install", "watchdog"]))
    _ok(run([*pip, "install", str(wheel)]))
    _both_work(shared_venv)
    # Removing PyPI's watchdog leaves ours whole.
    _ok(run([*pip, "uninstall", "-y", "watchdog"]))
    assert "Usage: bup-watchdog" in _ok(run([str(shared_venv / "bup-watchdog"), "--help"]))
    # Ours first (still installed), then PyPI's watchdog.
    _ok(run([*pip, "install", "watchdog"]))
    _both_work(shared_venv)
    # Removing ours leaves PyPI's watchdog whole.
    _ok(run([*pip, "uninstall", "-y", "bup-watchdog"]))
    _ok(run([str(shared_venv / "python"), "-c", USE_PYPI_WATCHDOG]))
    gone = run([str(shared_venv / "python"), "-c", "import bup_watchdog"])
    assert gone.returncode != 0 and "No module named 'bup_watchdog'" in gone.stderr
    # And ours again, after PyPI's: both work.
    _ok(run([*pip, "install", str(wheel)]))
    _both_work(shared_venv)


def test_files_from_the_installed_wheel_are_the_checkouts_operations_files(
    built: tuple[Path, Path], shared_venv: Path, tmp_path: Path
) -> None:
    wheel, src = built
    pip = [str(shared_venv / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    _ok(run([*pip, "install", str(wheel)]))
    listed = _ok(run([str(shared_venv / "bup-watchdog"), "files"]))
    names = {line.split("\t")[0] for line in listed.splitlines()}
    for folder in ("dashboards", "deploy", "docs", "examples"):
        for path in (src / folder).rglob("*"):
            rel = path.relative_to(src).as_posix()
            if path.is_file() and path.suffix != ".py" and "__pycache__" not in rel:
                assert rel in names, f"{rel} is not listed by bup-watchdog files"
    dest = tmp_path / "ops"
    copied = _ok(run([str(shared_venv / "bup-watchdog"), "files", "--dest", str(dest)]))
    for line in copied.splitlines():
        rel = Path(line).relative_to(dest)
        folder, rest = rel.parts[0], Path(*rel.parts[1:])
        source = src / folder / rest
        if folder == "hostside":
            source = src / "watchdog" / "hostside" / {
                "bupwatch-ssh-gate": "ssh_gate.py", "bupwatch-preflight": "preflight.py"
            }[rest.name]  # fmt: skip
            assert Path(line).stat().st_mode & 0o111, f"{line} is not executable"
        assert Path(line).read_bytes() == source.read_bytes(), line
    assert (dest / "deploy" / "bup-watchdog.service").is_file()
    assert (dest / "dashboards" / "prometheus" / "alerts.yml").is_file()
    assert (dest / "examples" / "config.toml").is_file()
    assert (dest / "docs" / "runbooks.md").is_file()
