"""The SDK-built dashboard: every panel of the one panel list, laid out without overlaps, ids unique."""

from fedshield.dashboard import ROWS, builder, dashboard


def test_every_listed_panel_is_built_with_its_queries_in_order():
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    listed = [p for _, row in ROWS for p in row]
    assert [p["title"] for p in panels] == [p.title for p in listed]
    for built, spec in zip(panels, listed, strict=True):
        assert built["type"] == spec.kind
        assert [(t["expr"], t["legendFormat"]) for t in built["targets"]] == list(spec.exprs)
        assert [t["refId"] for t in built["targets"]] == [chr(ord("A") + i) for i in range(len(spec.exprs))]
        assert built["fieldConfig"]["defaults"]["unit"] == spec.unit
        assert built["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_rows_and_panels_tile_the_grid_without_overlap():
    model = dashboard()
    cells = set()
    for p in model["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert [p["title"] for p in model["panels"] if p["type"] == "row"] == [title for title, _ in ROWS]
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])


def test_variables_and_schema_come_from_the_sdk():
    model = dashboard()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    silo = variables["silo"]
    assert silo["multi"] and silo["includeAll"] and silo["allValue"] == ".*"
    assert silo["query"]["query"] == "label_values(fedshield_silo_round, silo)"
    assert model["schemaVersion"] == builder().build().schema_version >= 39
    assert model["uid"] == "fedshield"
