"""What the three dashboards share: the data source, the host selection by name, the panel kinds
built with grafana-foundation-sdk, the links to the host dashboard and the repair annotations.

Every panel queries the data source chosen in ``$datasource`` (no data source UID is written into a
dashboard) and has a unit. Hosts are chosen by the name operators call them (``$host``, from
``bupwatch_server_info``); queries select by ``server_id`` through a join on that info series, which
also gives every per-host series its ``name`` and ``dc`` labels for legends and links.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence

from grafana_foundation_sdk.builders import (
    bargauge,
    heatmap,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

TAG = "bup-watchdog"
HOST_UID = "bupwatch-host"  # the audit report links here (report_links.grafana_host): keep it
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Units. A state (up/down, open/closed) is shown through its value mapping: "none" says so.
COUNT, SECONDS, BYTES, RATIO, STATE = "short", "s", "decbytes", "percentunit", "none"

# The chosen hosts (by name, within the chosen dcs), one series per server_id; ``group by`` keeps
# the join one-to-one when two watchdogs (an HA pair) export the same info series.
FLEET_HOSTS = 'group by (server_id, name, dc) (bupwatch_server_info{dc=~"$dc", name=~"$host"})'
ONE_HOST = 'group by (server_id, name, dc) (bupwatch_server_info{name="$host"})'


def on_hosts(expr: str, hosts: str = FLEET_HOSTS) -> str:
    """``expr`` (labelled by server_id) restricted to ``hosts``, with their name and dc labels."""
    return f"({expr}) * on (server_id) group_left (name, dc) {hosts}"


def lag_buckets(hosts: str = FLEET_HOSTS) -> str:
    """The replication lag buckets of ``hosts``, le_seconds copied to le so that
    histogram_quantile and heatmaps read them (a snapshot gauge per bucket, not a histogram)."""
    return on_hosts(
        'label_replace(bupwatch_replication_lag_replicas, "le", "$1", "le_seconds", "(.+)")', hosts
    )


def lag_over(bound: str, by: str, hosts: str = FLEET_HOSTS) -> str:
    """Replicas of ``hosts`` more than ``bound`` seconds behind, summed ``by``."""
    every = on_hosts('bupwatch_replication_lag_replicas{le_seconds="+Inf"}', hosts)
    within = on_hosts(f'bupwatch_replication_lag_replicas{{le_seconds="{bound}"}}', hosts)
    return f"sum{by} ({every}) - sum{by} ({within})"


# ---------------------------------------------------------------- links


def _host_url(preset: str) -> str:
    return f"/d/{HOST_UID}?{preset}&${{datasource:queryparam}}&${{__url_time_range}}"


def series_link() -> db.DashboardLink:
    """A data link from a series labelled ``name`` to the host dashboard with that host preset."""
    return db.DashboardLink("Host detail of ${__field.labels.name}").url(
        _host_url("var-host=${__field.labels.name}")
    )


def row_link() -> db.DashboardLink:
    """A data link from a table's host cell (its ``name`` column) to that host's dashboard."""
    return db.DashboardLink("Host detail of ${__value.text}").url(
        _host_url("var-host=${__value.raw}")
    )


def panel_link() -> db.DashboardLink:
    """A panel link (fleet-wide figures) to the host dashboard with the chosen host preset."""
    return db.DashboardLink("Host detail of the chosen host").url(_host_url("${host:queryparam}"))


# ---------------------------------------------------------------- queries and field settings


def target(
    expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series"
) -> prometheus.Dataquery:
    q = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .format(pm.PromQueryFormat(fmt))
        .editor_mode(pm.QueryEditorMode.CODE)
        .datasource(DS)
    )
    return q.instant() if instant else q.range()


def numbered(targets: Sequence[prometheus.Dataquery]) -> list[prometheus.Dataquery]:
    """The targets with refIds A, B, C…"""
    return [t.ref_id("ABCDEFGHIJ"[i]) for i, t in enumerate(targets)]


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


GOOD_BAD = ((None, "red"), (1, "green"))
BAD_GOOD = ((None, "green"), (1, "red"))
COUNT_BAD = ((None, "green"), (1, "orange"))
COVERAGE = ((None, "red"), (0.5, "orange"), (0.9, "green"))
BLUE = ((None, "blue"),)
AGE = ((None, "green"), (900, "orange"), (1800, "red"))
SAVE_LOG = ((None, "green"), (50e6, "orange"), (200e6, "red"))
SAVE_LOG_LINES = ((None, "transparent"), (50e6, "orange"), (200e6, "red"))

Steps = Sequence[tuple[float | None, str]]


def value_map(*entries: tuple[int, str, str]) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                str(v): dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (v, text, color) in enumerate(entries)
            }
        )
    ]


UP_DOWN = value_map((0, "down", "red"), (1, "up", "green"))
YES_NO_BAD = value_map((0, "no", "green"), (1, "YES", "red"))
BREAKER = value_map((0, "closed", "green"), (1, "OPEN: repairs suspended", "red"))
STATUS_COLORS = {
    "succeeded": "green",
    "failed": "red",
    "interrupted": "dark-red",
    "refused": "orange",
    "pending": "blue",
    "running": "purple",
    "conflict": "yellow",
    "dry_run": "text",
    "denied": "#8e8e8e",
    "critical": "red",
    "warning": "orange",
}


def fixed_color(color: str) -> list[dm.DynamicConfigValue]:
    return [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]


def on_right(unit: str) -> list[dm.DynamicConfigValue]:
    """A series in another unit, on an axis of its own on the right."""
    return [
        dm.DynamicConfigValue(id_val="unit", value=unit),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
    ]


Overrides = Sequence[tuple[str, list[dm.DynamicConfigValue]]]


def _colored(p: typing.Any, colors: dict[str, str] | None, by_regexp: Overrides = ()) -> None:
    for name, color in (colors or {}).items():
        p.override_by_name(name, fixed_color(color))
    for regexp, props in by_regexp:
        p.override_by_regexp(regexp, props)


def _common(
    p: typing.Any,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    links: Sequence[db.DashboardLink],
    panel_links: Sequence[db.DashboardLink],
) -> None:
    p.title(title).description(description).datasource(DS).unit(unit)
    p.targets(numbered(targets))
    if links:
        p.data_links(list(links))
    if panel_links:
        p.links(list(panel_links))


class Links(typing.TypedDict, total=False):
    links: Sequence[db.DashboardLink]
    panel_links: Sequence[db.DashboardLink]


# ---------------------------------------------------------------- panel kinds


def stat_panel(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    description: str,
    unit: str,
    steps: Steps = BLUE,
    mappings: list[dm.ValueMapping] | None = None,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE,
    **links: typing.Unpack[Links],
) -> stat.Panel:
    p = stat.Panel()
    _common(p, title, description, targets, unit, **_links(links))
    p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)).thresholds(
        thresholds(*steps)
    )
    if mappings:
        p.mappings(mappings)
    graph = cm.BigValueGraphMode.AREA if text_mode == cm.BigValueTextMode.VALUE else None
    return (
        p.reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(""))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(graph or cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.CENTER)
        .text_mode(text_mode)
        .orientation(cm.VizOrientation.AUTO)
    )


def _links(links: Links) -> dict[str, Sequence[db.DashboardLink]]:
    return {"links": links.get("links", ()), "panel_links": links.get("panel_links", ())}


def timeseries_panel(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    description: str,
    unit: str,
    stack: bool = False,
    bars: bool = False,
    log_scale: bool = False,
    steps: Steps | None = None,
    colors: dict[str, str] | None = None,
    by_regexp: Overrides = (),
    min_zero: bool = True,
    **links: typing.Unpack[Links],
) -> timeseries.Panel:
    p = timeseries.Panel()
    _common(p, title, description, targets, unit, **_links(links))
    p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
    p.draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE).line_width(1)
    p.fill_opacity(70 if bars else (25 if stack else 10)).show_points(cm.VisibilityMode.NEVER)
    p.span_nulls(True).stacking(
        cb.StackingConfig()
        .mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE)
        .group("A")
    )
    if min_zero:
        p.axis_soft_min(0)
    if log_scale:
        p.scale_distribution(cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LOG).log(10))
    if steps:
        p.thresholds(thresholds(*steps)).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE_AND_AREA)
        )
    _colored(p, colors, by_regexp)
    return p.legend(
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull"])
    ).tooltip(
        cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
    )


def state_timeline_panel(
    title: str,
    expr: str,
    legend: str,
    *,
    description: str,
    mappings: list[dm.ValueMapping],
    **links: typing.Unpack[Links],
) -> statetimeline.Panel:
    p = statetimeline.Panel()
    _common(p, title, description, [target(expr, legend)], STATE, **_links(links))
    p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
    p.mappings(mappings).thresholds(thresholds((None, "green")))
    return (
        p.fill_opacity(80)
        .line_width(0)
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .legend(cb.VizLegendOptions().show_legend(False))
    )


def bargauge_panel(
    title: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    description: str,
    unit: str,
    steps: Steps = BLUE,
    min_max: tuple[float, float] | None = None,
    **links: typing.Unpack[Links],
) -> bargauge.Panel:
    p = bargauge.Panel()
    _common(p, title, description, [t.instant() for t in targets], unit, **_links(links))
    p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
    p.thresholds(thresholds(*steps))
    if min_max:
        p.min(min_max[0]).max(min_max[1])
    return (
        p.reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(""))
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .name_placement(cm.BarGaugeNamePlacement.LEFT)
        .sizing(cm.BarGaugeSizing.AUTO)
    )


def table_panel(
    title: str,
    expr: str,
    *,
    description: str,
    columns: dict[str, str],
    unit: str = COUNT,
    **links: typing.Unpack[Links],
) -> table.Panel:
    """An instant query as a table; ``columns`` maps label names to headers (others hidden). With
    a ``name`` column, each host links to its detail dashboard (``links`` go on that column)."""
    order = {name: i for i, name in enumerate([*columns, "Value"])}
    p = table.Panel()
    row_links = links.pop("links", ())
    _common(p, title, description, [target(expr, instant=True, fmt="table")], unit, **_links(links))
    if row_links:  # on the host cells, matched by the header the name column is renamed to
        p.override_by_name(
            columns["name"],
            [dm.DynamicConfigValue(id_val="links", value=[link.build() for link in row_links])],
        )
    p.transformations(
        [
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "indexByName": order,
                    "renameByName": {**columns, "Value": "count"},
                },
            ),
            dm.DataTransformerConfig(
                id_val="filterFieldsByName",
                options={"include": {"names": [*columns, "Value"]}},
            ),
            dm.DataTransformerConfig(
                id_val="sortBy", options={"sort": [{"field": "Value", "desc": True}]}
            ),
        ]
    )
    return (
        p.align(cm.FieldTextAlignment.AUTO)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .footer(cb.TableFooterOptions().show(False).reducer([]))
    )


def heatmap_panel(
    title: str, expr: str, *, description: str, **links: typing.Unpack[Links]
) -> heatmap.Panel:
    p = heatmap.Panel()
    _common(p, title, description, [target(expr, "{{le}}", fmt="heatmap")], COUNT, **_links(links))
    return (
        p.calculate(False)
        .cell_gap(1)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
            .exponent(0.5)
            .fill("dark-orange")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .reverse(False)
        )
        .y_axis(heatmap.YAxisConfig().unit(SECONDS).axis_placement(cm.AxisPlacement.LEFT))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        .mode(cm.TooltipDisplayMode.SINGLE)
        .show_y_histogram()
        .show_legend()
        .cell_values(heatmap.CellValues().unit(COUNT))
        .exemplars_color("rgba(255,0,255,0.7)")
    )


# ---------------------------------------------------------------- variables


def datasource_var() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .multi(False)
        .include_all(False)
        .regex("")
    )


def query_var(
    name: str,
    label: str,
    query: str,
    *,
    multi: bool = True,
    hide: dm.VariableHide = dm.VariableHide.DONT_HIDE,
) -> db.QueryVariable:
    v = (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DS)
        .hide(hide)
        .multi(multi)
        .include_all(multi)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .regex("")
        .allow_custom_value(False)
    )
    return v.all_value(".*") if multi else v


def dc_var() -> db.QueryVariable:
    return query_var("dc", "Data centre", "label_values(bupwatch_server_info, dc)")


def host_var(*, multi: bool = True) -> db.QueryVariable:
    """Hosts by the name operators call them (``name`` of ``bupwatch_server_info``)."""
    return query_var(
        "host", "Host", 'label_values(bupwatch_server_info{dc=~"$dc"}, name)', multi=multi
    )


# ---------------------------------------------------------------- annotations


class PrometheusAnnotation(dm.AnnotationQuery):
    """An annotation query on Prometheus, with the fields Grafana's Prometheus data source reads
    for the marker's title and tags (``titleFormat``, ``tagKeys``, ``step``), which the SDK's
    generic AnnotationQuery model does not have."""

    def __init__(self, title_format: str, tag_keys: str, step: str, **kw: typing.Any) -> None:
        super().__init__(**kw)
        self.title_format, self.tag_keys, self.step = title_format, tag_keys, step

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "titleFormat": self.title_format,
            "tagKeys": self.tag_keys,
            "step": self.step,
            "useValueForTime": False,
        }


class PrometheusAnnotationBuilder(cogbuilder.Builder[dm.AnnotationQuery]):
    def __init__(self, annotation: PrometheusAnnotation) -> None:
        self._internal = annotation

    def build(self) -> dm.AnnotationQuery:
        return self._internal


def repair_annotations() -> list[cogbuilder.Builder[dm.AnnotationQuery]]:
    """Markers where the watchdog's repair counters moved: repairs run, and requests refused."""

    def marker(name: str, outcomes: str, color: str) -> PrometheusAnnotationBuilder:
        expr = (
            "sum by (repair, outcome) "
            f'(changes(bupwatch_repairs_total{{outcome=~"{outcomes}"}}[2m])) > 0'
        )
        return PrometheusAnnotationBuilder(
            PrometheusAnnotation(
                "{{repair}}: {{outcome}}",
                "repair,outcome",
                "1m",
                name=name,
                datasource=DS,
                enable=True,
                hide=False,
                icon_color=color,
                expr=expr,
            )
        )

    return [
        marker("Repairs (watchdog)", "succeeded|failed|conflict|interrupted", "purple"),
        marker("Repairs refused (guard)", "refused|denied", "orange"),
    ]


# ---------------------------------------------------------------- the dashboard


class Board:
    """A dashboard being built: rows and panels laid out left to right by the SDK, numbered."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.next_id = 1
        self.builder = (
            db.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .timezone("utc")
            .time("now-24h", "now")
            .refresh("1m")
            .version(1)
            .fiscal_year_start_month(0)
            .live_now(False)
            .link(
                db.DashboardLink("bup-watchdog")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .annotations(repair_annotations())
        )

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.builder.with_row(db.Row(title).collapsed(False).id(self._id()))

    def add(self, panel: typing.Any, w: int, h: int) -> None:
        self.builder.with_panel(panel.span(w).height(h).id(self._id()))

    def variables(self, *variables: cogbuilder.Builder[dm.VariableModel]) -> None:
        self.builder.variables(list(variables))

    def render(self) -> str:
        return (
            json.dumps(self.builder.build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"
        )
