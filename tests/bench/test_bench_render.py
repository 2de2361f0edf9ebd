"""The benchmark's harness: the rotation of the side-by-side rounds, the README's generated part
rendered from raw figures, and the daemon's config copy (bench/rounds.py, render.py,
daemon_rss.py). Fast: no fleet is built here (bench/compare.py's small trial does that)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.daemon_rss import daemon_config, growth, listen_address  # noqa: E402
from bench.render import END, START, render, write_readme  # noqa: E402
from bench.rounds import CONTENDERS, rotation  # noqa: E402


def run(wall: float, load: float, **kw: Any) -> dict[str, Any]:
    return {"wall": wall, "load_before": load, "load_after": load, "host_cpu": 1.0, **kw}


def size(repos: int, e2e: float, sweep: float, peer: float, daemon: bool = False) -> dict:
    wd = {"cpu": 0.5, "exact": True, "inventory_load_seconds": 0.3, "peak_rss_mb": 80.0}
    out: dict[str, Any] = {
        "repos": repos,
        "projects": repos // 2,
        "hosts": 20,
        "build_seconds": 30.0,
        "rounds": {
            "watchdog_e2e": [run(e2e, 1.5, cpu=1.0, exact=True), run(e2e + 1, 2.5, cpu=1.0)],
            "watchdog_sweep": [run(sweep, 1.1, **wd), run(sweep + 0.2, 1.2, **wd)],
            "ansible": [
                run(peer, 3.3, local_cpu=2.0, failed_hosts=[], wrong=0, lines=repos, repos=repos)
            ]
            * 2,
            "pssh": [{"skipped": "parallel-ssh is not installed", "round": 1, "load_before": 1}],
        },
        "detail": {
            "inventory_load_seconds": 0.4,
            "full": [{"wall": sweep, "cpu": 0.5, "host_cpu": 1.0}],
            "peak_rss_incremental_window_mb": 150.0,
            "probe_output": {"bytes_per_repo": 250.0},
            "metrics": {"median": 1.0, "first": 20.0},
            "incremental": {
                "rounds": [{"wall": sweep / 20, "cpu": 0.01, "host_cpu": 0.02, "walked": 10}],
                "compared": repos,
                "mismatched": 0,
            },
        },
    }
    if daemon:
        out["daemon"] = {
            "rss_mb": {"1": 100.0, "10": 110.0, "100": 112.0},
            "load_avg": {"1": 1.0, "10": 1.0, "100": 1.0},
            "seconds": {"1": 5.0, "10": 50.0, "100": 500.0},
            "peak_rss_mb": 120.0,
            "growth_pct": growth({1: 100.0, 10: 110.0, 100: 112.0}),
            "flat": True,
            "interval_seconds": 5.0,
            "scrapes": 900,
            "scrape_ms_median": 0.4,
            "scrape_ms_max": 30.0,
        }
    return out


DATA = {
    "date": "2026-12-05 06:00 UTC",
    "commit": "abc1234",
    "machine": "2 cores",
    "versions": "OpenSSH",
    "command": "bench/compare.py",
    "rounds": 2,
    "elapsed_seconds": 600.0,
    "load_avg": {"start": 1.0, "end": 2.0},
    "results": [size(10_000, 2.0, 1.0, 30.0), size(100_000, 10.0, 8.0, 90.0, daemon=True)],
    "metrics_synthetic": {"projects": 100_000, "median": 0.1, "first": 40.0},
}


def test_each_contender_runs_once_per_round_and_in_every_position_once_in_four_rounds() -> None:
    order = rotation(CONTENDERS, 4)
    assert all(sorted(r) == sorted(CONTENDERS) for r in order)
    for position in range(len(CONTENDERS)):  # each runs in every position once
        assert {r[position] for r in order} == set(CONTENDERS)


def test_every_run_is_shown_with_the_load_average_before_it_and_medians_are_bold() -> None:
    text = render(DATA)
    assert "2.00 ‹1.5›, 3.00 ‹2.5›" in text  # both end-to-end runs at 10k, each with its load
    assert "**2.50 s**" in text  # their median
    assert "parallel-ssh is not installed" in text  # a skipped peer says why, no figure


def test_targets_say_met_or_not_from_the_figures_at_the_largest_size() -> None:
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |")
        for line in render(DATA).splitlines()
        if line.startswith("| ") and line.count(" | ") == 4
    }
    # 10k: 15x Ansible; 100k: 9x; parallel-ssh not measured anywhere -> not met at 100k
    assert (
        rows["end to end vs Ansible / parallel-ssh, side by side, rotated, none extrapolated"]
        == "–"
    )
    assert rows["probe output per repository (100k)"] == "yes"
    assert (
        rows[
            "`/metrics` at 100,000 projects (synthetic): first scrape after a sweep "
            "(between sweeps: median)"
        ]
        == "no"
    )
    assert rows["daemon RSS (`bup-watchdog run`), no growth"] == "yes"  # +1.8 % from sweep 10


def test_the_readme_is_rewritten_between_its_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nintro\n{START}\nold table\n{END}\n## Hand-written\nkept\n")
    write_readme(readme, render(DATA))
    text = readme.read_text()
    assert text.startswith("# Title\nintro\n" + START)
    assert "old table" not in text and text.endswith(f"{END}\n## Hand-written\nkept\n")


def test_a_readme_without_markers_is_refused_not_overwritten(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# only hand-written text\n")
    with pytest.raises(SystemExit, match="markers"):
        write_readme(readme, render(DATA))
    assert readme.read_text() == "# only hand-written text\n"


def test_the_bench_readme_has_the_markers_the_one_command_writes_between() -> None:
    text = (ROOT / "bench" / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1 and text.index(START) < text.index(END)


def test_the_daemon_runs_on_a_copy_of_the_config_with_a_short_interval_and_its_own_state(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[state]\ndirectory = "state"\n\n[http]\nlisten = "127.0.0.1:9999"\n\n'
        "[schedule]\nauto_repair = false\n"
    )
    copy = daemon_config(config, 5.0)
    import tomllib

    data = tomllib.loads(copy.read_text())
    assert data["schedule"] == {
        "sweep_interval_seconds": 5.0,
        "jitter_seconds": 0,
        "auto_repair": False,
    }
    assert data["state"]["directory"] == "state-daemon"
    assert listen_address(copy) == "127.0.0.1:9999"
    assert config.read_text().count("sweep_interval") == 0


def test_growth_is_measured_from_the_tenth_sweep_on() -> None:
    assert growth({1: 50.0, 10: 100.0, 100: 104.0}) == pytest.approx(4.0)
    assert growth({1: 50.0}) is None


def test_a_daemon_that_failed_is_a_missed_target_with_its_reason_not_a_blank() -> None:
    failed = size(100_000, 10.0, 8.0, 90.0)
    failed["daemon_error"] = "bup-watchdog run recorded no sweep for 900 s"
    text = render({**DATA, "results": [failed], "complete": False})
    assert "**A partial run**" in text
    assert (
        "| daemon RSS (`bup-watchdog run`), no growth | not measured | failed: bup-watchdog run "
        "recorded no sweep for 900 s | flat within 5 % | no |"
    ) in text


def test_a_failed_run_among_good_ones_is_shown_and_the_contender_is_not_called_correct() -> None:
    one = size(10_000, 2.0, 1.0, 30.0)
    one["rounds"]["ansible"][1] = {"error": "RuntimeError: boom", "load_before": 4.0}
    text = render({**DATA, "results": [one]})
    assert "**30.00 s** **1 failed** (30.00 ‹3.3›, failed ‹4.0›)" in text
    assert "| … output correct | yes |\n| **parallel-ssh**" not in text


def test_the_prose_counts_the_figures_taken_without_quiet() -> None:
    from bench.render import settle_sentence

    def row(quiet: bool, walk: float) -> dict[str, object]:
        return {"wall": 1.0, "settle": {"warm_seconds": walk, "quiet": quiet}}

    data = {
        "results": [
            {"rounds": {"warmup": [{"wall": 9.0}], "pssh": [row(True, 15.4), row(False, 37.7)]}}
        ]
    }
    text = settle_sentence(data)
    assert "15–38 s" in text and "1 of 2 figures were taken without that quiet" in text
    data["results"][0]["rounds"]["pssh"] = [row(True, 2.0)]
    assert settle_sentence(data).endswith("(`bench/settle.py`).")
    assert settle_sentence({"results": [{"rounds": {"pssh": [{"wall": 1.0}]}}]}) == ""
