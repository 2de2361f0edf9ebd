"""Generate the Grafana dashboards of bup-watchdog as provisionable JSON, with the Grafana SDK.

grafana-foundation-sdk (typed builders for dashboards, panels, variables and queries) builds
them: one module per dashboard under ``bupwatch_grafana/`` (``fleet``, ``host``, ``health``), what
they share in ``bupwatch_grafana/common.py``. The SDK is a development dependency (the ``test``
extra): the JSON files beside this script are its output, committed and shipped in the wheel, and
the tests fail when they differ from what this script writes.

    python dashboards/grafana/generate.py              # rewrite the JSON files here
    python dashboards/grafana/generate.py --out DIR    # write them into DIR instead
    python dashboards/grafana/generate.py --check      # exit 1 when a file here is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bupwatch_grafana modules beside this script, not an install

from bupwatch_grafana.common import Board  # noqa: E402
from bupwatch_grafana.fleet import fleet_overview  # noqa: E402
from bupwatch_grafana.health import watchdog_health  # noqa: E402
from bupwatch_grafana.host import host_detail  # noqa: E402

DASHBOARDS: dict[str, Callable[[], Board]] = {
    "fleet-overview.json": fleet_overview,
    "host-detail.json": host_detail,
    "watchdog-health.json": watchdog_health,
}


def render(name: str) -> str:
    """The JSON text of one dashboard, as committed."""
    return DASHBOARDS[name]().render()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write the JSON files into")
    ap.add_argument("--check", action="store_true", help="exit 1 when a file is out of date")
    args = ap.parse_args()
    stale = []
    for name in DASHBOARDS:
        path = args.out / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
