"""Every alert can be acted on: a summary, a description and a runbook_url naming its section of
docs/runbooks.md, and that section says what it means, what the watchdog does, what to do by hand
(with commands) and how to verify."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_PATH = "docs/runbooks.md"
PARTS = (
    "**What it means.**",
    "**What the watchdog does by itself.**",
    "**By hand.**",
    "**Verify.**",
)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but '-' and '_' dropped,
    spaces to '-' (duplicates get -1, -2…, which no alert's section may need)."""
    text = re.sub(r"[`*_]{1,2}(\S.*?)[`*_]{1,2}", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def sections() -> dict[str, str]:
    """The runbook's second-level sections: anchor → body."""
    found: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        anchor = github_anchor(heading)
        assert anchor not in found, f"two runbook sections have the anchor {anchor}"
        found[anchor] = body
    return found


def test_the_anchor_rule_is_githubs() -> None:
    assert github_anchor("BupWatchHostUnreachable") == "bupwatchhostunreachable"
    assert github_anchor("What `repairs ack` does, now!") == "what-repairs-ack-does-now"
    assert github_anchor("state_up and state-writable") == "state_up-and-state-writable"


def test_every_alert_has_a_summary_a_description_and_a_runbook_url() -> None:
    missing = {
        name: sorted({"summary", "description", "runbook_url"} - set(rule.get("annotations", {})))
        for name, rule in alerts().items()
    }
    assert alerts(), "no alert found"
    assert {name: m for name, m in missing.items() if m} == {}
    empty = [
        name
        for name, rule in alerts().items()
        if not all(str(v).strip() for v in rule["annotations"].values())
    ]
    assert empty == []


def test_every_runbook_url_names_the_section_of_its_alert() -> None:
    anchors = sections()
    wrong = {}
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        if path != RUNBOOK_PATH or anchor != name.lower() or anchor not in anchors:
            wrong[name] = url
    assert wrong == {}, f"runbook_url must be {RUNBOOK_PATH}#<alert in lower case>, a section"


def test_every_runbook_section_is_an_alert_and_says_what_to_do_with_commands() -> None:
    names = {name.lower() for name in alerts()}
    anchors = sections()
    assert set(anchors) - names == set(), "runbook sections for alerts that do not exist"
    incomplete = {
        anchor: [p for p in PARTS if p not in body]
        for anchor, body in anchors.items()
        if any(p not in body for p in PARTS)
    }
    assert incomplete == {}
    by_hand = {
        a: b.split("**By hand.**", 1)[1].split("**Verify.**", 1)[0] for a, b in anchors.items()
    }
    without_commands = sorted(a for a, text in by_hand.items() if "```sh" not in text)
    assert without_commands == [], "a By hand part without a command block"


def test_the_commands_in_the_runbooks_are_ones_the_cli_has() -> None:
    from click import Group

    from bup_watchdog.cli import main
    from bup_watchdog.repairs import registry as repair_registry

    said = re.findall(r"bup-watchdog (?:-\w+ )*([a-z]+)(?: ([a-z_]+))?", RUNBOOKS.read_text())
    assert len(said) > 50, "the runbooks name few commands"
    unknown = set()
    for command, sub in said:
        cmd = main.get_command(None, command)  # type: ignore[arg-type]
        if cmd is None:
            unknown.add(command)
        elif command == "repair" and sub and sub not in repair_registry():
            unknown.add(f"repair {sub}")
        elif isinstance(cmd, Group) and sub and cmd.get_command(None, sub) is None:  # type: ignore[arg-type]
            unknown.add(f"{command} {sub}")
    assert unknown == set()
