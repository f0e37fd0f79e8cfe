"""Graph pictures: a layered layout whose edges never cross a box, phases on bands, a
forward-only view, and files written atomically."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from convforge import viz
from convforge.show import model_graph


@pytest.fixture(scope="module")
def lenet_train():
    graph, _ = model_graph("lenet5", training=True, backend="reference")
    return graph


@pytest.fixture(scope="module")
def resnet():
    graph, _ = model_graph("resnet-small", backend="reference")
    return graph


def _inside(point, box, margin=0.02):
    x, y = point
    return (
        abs(x - box.x) < box.width / 2 - margin and abs(y - box.y) < box.height / 2 - margin
    )  # fmt: skip


def _samples(route):
    """Points along the drawn path: its straight parts and its curves (Bezier, sampled)."""
    verts, codes = viz.curve(route)
    points, k = [verts[0]], 1
    while k < len(verts):
        if codes[k] == 4:  # CURVE4: three vertices
            p0, p1, p2, p3 = (np.array(v) for v in (verts[k - 1], *verts[k : k + 3]))
            for t in np.linspace(0, 1, 25):
                points.append(
                    tuple((1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3)
                )
            k += 3
        else:
            a, b = np.array(verts[k - 1]), np.array(verts[k])
            points += [tuple(a + t * (b - a)) for t in np.linspace(0, 1, 25)]
            k += 1
    return points


@pytest.mark.parametrize("name", ["lenet_train", "resnet"])
@pytest.mark.parametrize("forward_only", [False, True])
def test_edges_go_around_boxes(request, name, forward_only):
    graph = request.getfixturevalue(name)
    lay = viz.layout(graph, forward_only=forward_only)
    boxes = lay.boxes()
    for route in lay.edges:
        for point in _samples(route):
            hit = [b for b in boxes if _inside(point, b)]
            assert not hit, f"an edge crosses the box {hit[0].label!r} at {point}"
    for row in lay.rows:  # boxes of a row never overlap
        for a, b in zip(row, row[1:]):
            assert b.x - a.x >= (a.width + b.width) / 2 - 1e-9


def test_training_graph_is_grouped_by_phase(lenet_train):
    lay = viz.layout(lenet_train)
    ops = [b for b in lay.boxes() if b.kind != "input"]
    rows = {p: [b.row for b in ops if b.phase == p] for p in viz.PHASES}
    assert all(rows.values())
    assert max(rows["forward"]) < min(rows["backward"]) <= max(rows["backward"]) < min(rows["update"])
    assert any("0 (Conv2d)" in b.label for b in ops)  # layer names on the boxes
    forward = viz.layout(lenet_train, forward_only=True)
    assert {b.phase for b in forward.boxes()} == {"forward"}
    assert len(forward.boxes()) < len(lay.boxes())


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_each_view_renders(tmp_path, lenet_train, resnet, suffix):
    for name, graph, forward_only in [
        ("train", lenet_train, False),
        ("fwd", lenet_train, True),
        ("res", resnet, False),
    ]:
        path = viz.draw_graph(graph, tmp_path / f"{name}.{suffix}", forward_only=forward_only)
        if suffix == "png":
            assert mpimg.imread(path).shape[0] > 300
        else:
            assert "op family" in path.read_text()  # the legend
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{suffix}" for n in ("train", "fwd", "res")
    )


def test_picture_is_written_atomically(tmp_path, resnet, monkeypatch):
    import matplotlib.figure

    target = tmp_path / "graph.png"
    target.write_bytes(b"the previous picture")

    def fail(self, f, **kwargs):
        f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        viz.draw_graph(resnet, target)
    assert target.read_bytes() == b"the previous picture"  # old or new, never torn
    assert [p.name for p in tmp_path.iterdir()] == ["graph.png"]  # no temporary left behind
