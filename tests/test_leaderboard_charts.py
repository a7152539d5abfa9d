"""The server-side SVG charts: valid SVG, one polyline per series, long series thinned, empty ones said."""

import xml.etree.ElementTree as ET

from leaderboard.charts import MAX_POINTS, Series, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_is_svg_with_one_polyline_per_series_inside_its_box():
    svg = line_chart(
        [Series("a", [(0, 1.0), (1, 2.0), (2, 1.5)]), Series("b <&>", [(0, 3.0), (2, 0.5)])],
        title="t & t",
        x_label="step",
        y_label="nats",
        width=400,
        height=200,
    )
    root = ET.fromstring(str(svg))
    lines = root.findall(f"{SVG}polyline")
    assert [p.get("data-label") for p in lines] == ["a", "b <&>"]
    for p in lines:
        for xy in p.get("points").split():
            x, y = map(float, xy.split(","))
            assert 0 <= x <= 400 and 0 <= y <= 200


def test_long_series_are_thinned_and_empty_charts_say_so():
    svg = line_chart([Series("x", [(i, float(i % 7)) for i in range(50_000)])], title="t", x_label="", y_label="")
    assert int(ET.fromstring(str(svg)).get("data-points")) <= MAX_POINTS + 1
    empty = ET.fromstring(str(line_chart([Series("x", [(0, float("nan"))])], title="t", x_label="", y_label="")))
    assert empty.findall(f"{SVG}polyline") == [] and "no data" in "".join(empty.itertext())


def test_a_step_chart_holds_each_record_until_the_next():
    svg = line_chart([Series("r", [(0, 10.0), (5, 8.0)])], title="t", x_label="", y_label="", step=True)
    points = ET.fromstring(str(svg)).find(f"{SVG}polyline").get("points").split()
    assert len(points) == 4 and points[0].split(",")[1] == points[1].split(",")[1]  # flat until the next record
