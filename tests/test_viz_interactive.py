"""Tests of the interactive route viewer (captum_influence_patterns.viz.interactive).

The page is opened in a real browser: the system's Chromium (Debian's ``chromium``)
driven by Playwright's Python package. Without the browser these tests skip, unless
``CIP_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where they fail.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import random
import re
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

from captum_influence_patterns.cli import main
from captum_influence_patterns.paper.report import patterns_page
from captum_influence_patterns.results import (
    Attributions,
    AttributionsAndDelta,
    InfluencePatternsResult,
    Pattern,
)
from captum_influence_patterns.routes.compare import compare
from captum_influence_patterns.testing import (
    MLM_TEXT,
    agreement_batch,
    agreement_keywords,
    attribution,
    masked_lm,
)
from captum_influence_patterns.viz.interactive import (
    page_data,
    viewer_html,
    viewer_iframe,
)

#: The system browser and the switches it runs with here (as root, offline).
CHROMIUM = os.environ.get("CIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def explained(tiny_checkpoints, tmp_path_factory) -> Tuple[str, Dict[str, Any]]:
    """``explain --out DIR`` on the tiny masked LM: (the page's path, pattern.json)."""
    _, paths = tiny_checkpoints
    out = str(tmp_path_factory.mktemp("explain"))
    argv = ["explain", MLM_TEXT, "--target", "is", "--contrast", "are", "--model",
            paths["mlm"], "--n-steps", "8", "--out", out, "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    with open(os.path.join(out, "pattern.json"), encoding="utf-8") as handle:
        return os.path.join(out, "pattern.html"), json.load(handle)


@pytest.fixture(scope="module")
def browser():
    """The system Chromium; skipped when missing, unless CIP_REQUIRE_BROWSER=1."""
    required = os.environ.get("CIP_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        if required:
            pytest.fail(f"CIP_REQUIRE_BROWSER=1 but playwright is missing: {error}")
        pytest.skip("playwright is not installed")
    if not os.path.exists(CHROMIUM):
        if required:
            pytest.fail(f"CIP_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
        pytest.skip(f"no browser at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class Page:
    """A page open in the browser, with the errors it logs."""

    def __init__(self, browser, url: str = None, content: str = None) -> None:
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 800}, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.errors: List[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # Anything but the page itself would be a network request.
        self.requests: List[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        if url is not None:
            self.page.goto(url)
        else:
            self.page.set_content(content)

    def ready(self) -> "Page":
        self.page.wait_for_selector("#cip-root[data-ready]")
        return self

    def close(self) -> None:
        self.context.close()


@contextlib.contextmanager
def opened(browser, path: str):
    page = Page(browser, url="file://" + os.path.abspath(path)).ready()
    try:
        yield page
    finally:
        page.close()


def _resolve(document: Dict[str, Any], key: str) -> Any:
    value: Any = document
    for part in key.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_numbers(page) -> List[Tuple[str, str, str]]:
    """(data-key, data-value, text) of every number the page shows now."""
    return page.eval_on_selector_all(
        ".num", "ns => ns.map(n => [n.dataset.key, n.dataset.value, n.textContent])"
    )


def check_numbers(page, document: Dict[str, Any]) -> int:
    """Every shown number is the JSON's value at its key (exactly, and as printed to
    4 significant digits); every shown ratio is the quotient of its two values."""
    numbers = shown_numbers(page)
    for key, value, text in numbers:
        expected = _resolve(document, key)
        if expected is None:  # not a number in the JSON (NaN, or not computed)
            assert (value, text) == ("null", "-"), key
            continue
        assert float(value) == expected, key
        assert float(text) == pytest.approx(expected, rel=5e-4, abs=0), key
    ratios = page.eval_on_selector_all(
        ".ratio[data-value]",
        "ns => ns.map(n => [n.dataset.top, n.dataset.bottom, n.dataset.value])",
    )
    for top, bottom, value in ratios:
        expected = _resolve(document, top) / _resolve(document, bottom)
        assert float(value) == pytest.approx(expected, rel=1e-12)
    return len(numbers)


def set_share(page, share: float) -> None:
    """Move the |g| share slider (a range input takes no typed text)."""
    page.eval_on_selector(
        ".cip-share",
        "(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }",
        str(share),
    )


def hover_token(page, position: int) -> None:
    page.hover(f'.cip-svg .token[data-position="{position}"] rect.label')


def node_selector(source: int, layer: int) -> str:
    return (
        f'.route[data-label="guided"] .node[data-source="{source}"]'
        f'[data-layer="{layer}"]'
    )


def click_node(page, source: int, layer: int) -> None:
    """Bring the route to the top (hover its token), then click its node."""
    hover_token(page, source)
    page.click(node_selector(source, layer))


# ------------------------------------------------------------- the page as written
class TestPageFile:
    def test_explain_writes_the_viewer_drawn_from_its_json(self, explained):
        path, document = explained
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        assert text.startswith("<!DOCTYPE html>")
        data = page_data(text)
        assert data["view"] == "pattern"
        assert data["document"] == document  # same data, one source

    def test_page_is_self_contained(self, explained):
        with open(explained[0], encoding="utf-8") as handle:
            text = handle.read()
        assert "<script src" not in text and "<link" not in text
        assert "@import" not in text and "url(" not in text
        # The one address is the SVG namespace, which is a name, not a request.
        addresses = set(re.findall(r"https?://[^\s'\"<>]+", text))
        assert addresses <= {"http://www.w3.org/2000/svg"}, addresses

    def test_script_end_in_the_data_is_escaped(self, explained):
        document = dict(explained[1], text="</script><b>x</b>")
        text = viewer_html(document)
        assert page_data(text)["document"]["text"] == "</script><b>x</b>"
        assert text.count("</script>") == 2

    def test_result_to_html_and_notebook_frame(self, explained):
        result = InfluencePatternsResult.from_dict(explained[1])
        page = result.to_html()
        assert page_data(page)["document"]["patterns"] == explained[1]["patterns"]
        frame = result._repr_html_()
        assert frame == viewer_iframe(result)
        assert frame.startswith("<iframe srcdoc=")
        assert 'sandbox="allow-scripts allow-downloads"' in frame
        srcdoc = re.match(r'<iframe srcdoc="([^"]*)"', frame).group(1)
        assert html.unescape(srcdoc) == viewer_html(result)

    def test_what_attribute_returns_shows_the_viewer(self, explained):
        """Jupyter looks ``_repr_html_`` up on the class: the LIG-shaped return values
        of ``attribute`` show the same frame as their result."""
        result = InfluencePatternsResult.from_dict(explained[1])
        values = torch.zeros(1, len(result.input_ids[0]), 4)
        attributions = Attributions.of(values, result)
        frame = viewer_iframe(result)
        assert attributions._repr_html_() == frame
        pair = AttributionsAndDelta((attributions, torch.zeros(1)))
        assert pair._repr_html_() == frame

    def test_bad_example_is_refused(self, explained):
        with pytest.raises(ValueError, match="example must be in"):
            viewer_html(explained[1], example=3)
        with pytest.raises(TypeError, match="result_or_document"):
            viewer_html([1, 2])


# --------------------------------------------------------------------- synthetic data
def synthetic_document(
    layers: int, length: int, heads: int, seed: int = 0, output: int = None
) -> Dict[str, Any]:
    """A pattern-v1 document of random routes with candidates (any depth, length)."""
    rng = random.Random(seed)
    output = length - 2 if output is None else output
    g = [rng.uniform(-1, 1) * (0.1 if rng.random() < 0.7 else 1) for _ in range(length)]
    g[output] = 0.0
    patterns = []
    for source in (j for j in range(length) if j != output):
        sign = 1 if g[source] >= 0 else -1
        positions, nodes = [source], []
        position_candidates, node_candidates = [], []
        influence = g[source]
        for layer in range(1, layers + 1):
            previous = positions[-1]
            if layer == layers:
                position = output
            elif rng.random() < 0.05:
                position = rng.randrange(length)
            else:
                position = previous
            kind = "skip" if position == previous and rng.random() > 0.03 else "head"
            head = rng.randrange(heads) if kind == "head" else None
            influence *= rng.uniform(0.7, 1.0)
            scores = [sign * rng.uniform(-0.5, 0.5) * abs(influence)
                      for _ in range(length)]
            scores[position] = influence
            node_scores = [sign * rng.uniform(-0.5, 0.5) * abs(influence)
                           for _ in range(heads + 1)]
            node_scores[heads if kind == "skip" else head] = influence
            positions.append(position)
            nodes.append({"layer": layer, "position": position, "kind": kind,
                          "head": head, "influence": influence, "ffn": None,
                          "ffn_influence": None})
            position_candidates.append(scores)
            node_candidates.append(node_scores)
        patterns.append(Pattern.from_dict({
            "source": source, "sign": sign, "token_influence": g[source],
            "positions": positions,
            "position_influence": [n["influence"] for n in nodes],
            "embedding_influence": influence, "nodes": nodes, "influence": influence,
            "position_candidates": position_candidates,
            "node_candidates": node_candidates,
        }).to_dict())
    return {
        "format": "captum-influence-patterns/pattern-v1",
        "text": f"random routes: {layers} layers, {length} tokens",
        "qoi": "none (synthetic)",
        "token_influence": [g], "patterns": [patterns],
        "output_positions": [output], "input_ids": [list(range(length))],
        "tokens": [[f"w{j}" for j in range(length)]], "metadata": {},
    }


def synthetic_records() -> List[Dict[str, Any]]:
    """Evaluation lines: task 'a' form 'SS' with two sentences, 'a' 'PP' with one."""
    records = []
    for i, form in enumerate(("SS", "SS", "PP")):
        document = synthetic_document(3, 6, 2, seed=i, output=4)
        records.append({
            "id": f"a-{i}", "task": "a", "form": form, "text": f"sentence {i}",
            "tokens": document["tokens"][0], "input_ids": document["input_ids"][0],
            "output_position": 4, "correct": "is", "wrong": "are", "qoi": 1.0,
            "sources": [p["source"] for p in document["patterns"][0]],
            "token_influence": document["token_influence"][0],
            "patterns": document["patterns"][0],
        })
    return records


class TestEvaluationData:
    def test_groups_count_routes_by_hand(self):
        records = synthetic_records()
        data = page_data(patterns_page(records))
        groups = {(g["task"], g["form"]): g for g in data["groups"]}
        assert sorted(groups) == [("a", "PP"), ("a", "SS")]
        assert groups[("a", "SS")]["sentences"] == [0, 1]
        # Known answer: an edge's count is how many of the group's sentences take it.
        for group in groups.values():
            for edge in group["edges"]:
                taken = 0
                for i in group["sentences"]:
                    pattern = next(p for p in records[i]["patterns"]
                                   if p["source"] == edge["source"])
                    node = pattern["nodes"][edge["layer"] - 1]
                    start = ([pattern["source"]] + [n["position"] for n in
                             pattern["nodes"]])[edge["layer"] - 1]
                    taken += (start, node["position"], node["kind"]) == (
                        edge["start"], edge["end"], edge["kind"])
                assert edge["count"] == taken
                assert edge["fraction"] == taken / len(group["sentences"])


def test_report_patterns_option_refuses_a_folder(tmp_path):
    lines = tmp_path / "results.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records()))
    report = tmp_path / "out" / "report.md"
    argv = ["report", str(lines), "--output", str(report), "--patterns", str(tmp_path)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    lines_out = err.getvalue().strip().splitlines()
    assert len(lines_out) == 1 and "--patterns" in lines_out[0]
    assert not report.parent.exists()  # nothing written


# -------------------------------------------------------------------- in the browser
class TestBrowser:
    def test_no_console_errors_and_no_requests(self, browser, explained):
        path, document = explained
        with opened(browser, path) as page:
            p = page.page
            for pattern in document["patterns"][0]:
                hover_token(p, pattern["source"])
                click_node(p, pattern["source"], 1)
            p.check(".cip-collapse")
            set_share(p, 0.2)
            p.click("button.zoom >> nth=1")
            assert page.errors == []
            assert page.requests == ["file://" + os.path.abspath(path)]

    def test_hover_highlights_exactly_the_route(self, browser, explained):
        path, document = explained
        result = InfluencePatternsResult.from_dict(document)
        with opened(browser, path) as page:
            for pattern in result.patterns[0]:
                hover_token(page.page, pattern.source)
                shown = page.page.eval_on_selector_all(
                    ".node.highlight",
                    "ns => ns.map(n => [+n.dataset.source, +n.dataset.layer, "
                    "+n.dataset.position, n.dataset.kind])",
                )
                expected = [[pattern.source, n.layer, n.position, n.kind]
                            for n in pattern.nodes]
                assert sorted(shown) == sorted(expected)
                info = page.page.inner_text(".cip-route-info")
                assert f"Position {pattern.source}" in info
            assert page.errors == []

    def test_click_shows_the_candidates_of_the_result(self, browser, explained):
        path, document = explained
        result = InfluencePatternsResult.from_dict(document)
        with opened(browser, path) as page:
            p = page.page
            for pattern in result.patterns[0]:
                for node in pattern.nodes:
                    click_node(p, pattern.source, node.layer)
                    box = p.locator(".cip-candidate-list")
                    assert box.get_attribute("data-source") == str(pattern.source)
                    assert box.get_attribute("data-layer") == str(node.layer)
                    stages = {
                        "position": (pattern.position_candidates[node.layer - 1],
                                     pattern.positions[node.layer]),
                        "node": (pattern.node_candidates[node.layer - 1],
                                 len(pattern.node_candidates[node.layer - 1]) - 1
                                 if node.kind == "skip" else node.head),
                    }
                    for stage, (values, won) in stages.items():
                        rows = p.eval_on_selector_all(
                            f'.candidates[data-stage="{stage}"] .candidate',
                            "rs => rs.map(r => [+r.dataset.index, "
                            "r.classList.contains('won'), "
                            "r.querySelector('.num').dataset.value])",
                        )
                        assert sorted(i for i, _, _ in rows) == list(
                            range(len(values)))
                        for index, is_won, value in rows:
                            assert float(value) == values[index]
                            assert is_won == (index == won)
                        # Best first, in the direction the search maximised.
                        ordered = [pattern.sign * float(v) for _, _, v in rows]
                        assert ordered == sorted(ordered, reverse=True)
            assert page.errors == []

    def test_every_number_shown_is_the_json(self, browser, explained):
        path, document = explained
        seen = set()
        with opened(browser, path) as page:
            p = page.page
            seen.update(k for k, _, _ in shown_numbers(p))
            check_numbers(p, document)
            for pattern in document["patterns"][0]:
                hover_token(p, pattern["source"])
                check_numbers(p, document)
                seen.update(k for k, _, _ in shown_numbers(p))
                for node in pattern["nodes"]:
                    click_node(p, pattern["source"], node["layer"])
                    check_numbers(p, document)
                    seen.update(k for k, _, _ in shown_numbers(p))
        # The strip's g, and each source's g, I(pi^e) and I(pi^a) were all shown.
        length = len(document["tokens"][0])
        assert {f"token_influence/0/{j}" for j in range(length)} <= seen
        for k in range(len(document["patterns"][0])):
            for name in ("token_influence", "embedding_influence", "influence"):
                assert f"patterns/0/{k}/{name}" in seen

    def test_screenshot_is_not_blank(self, browser, explained, tmp_path):
        from matplotlib import image

        with opened(browser, explained[0]) as page:
            shot = tmp_path / "page.png"
            page.page.locator(".cip-svg").screenshot(path=str(shot))
        pixels = image.imread(str(shot))[..., :3]
        coloured = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2)
        assert (pixels.min(axis=2) < 0.9).mean() > 0.02  # drawn, not white
        assert (coloured > 0.2).mean() > 0.002  # route colours, not only text

    def test_export_svg_and_png(self, browser, explained, tmp_path):
        path, document = explained
        with opened(browser, path) as page:
            p = page.page
            hover_token(p, document["patterns"][0][0]["source"])
            with p.expect_download() as svg_download:
                p.click(".cip-export-svg")
            with p.expect_download() as png_download:
                p.click(".cip-export-png")
            svg_path, png_path = tmp_path / "view.svg", tmp_path / "view.png"
            svg_download.value.save_as(str(svg_path))
            png_download.value.save_as(str(png_path))
            assert page.errors == []
        tree = ET.parse(svg_path)
        lines = tree.getroot().findall(".//{http://www.w3.org/2000/svg}line")
        segments = sum(len(p["nodes"]) for p in document["patterns"][0])
        assert len(lines) >= segments
        assert png_path.read_bytes()[:8] == PNG_MAGIC

    def test_reference_routes_toggle(self, browser, explained, tmp_path):
        _, document = explained
        reference = [dict(p, label="rollout") for p in document["patterns"][0]]
        path = tmp_path / "routes.html"
        path.write_text(viewer_html(document, routes={"rollout": [reference]}))
        with opened(browser, str(path)) as page:
            p = page.page
            assert p.locator(".route.reference").count() == 0
            p.check('.cip-route-toggle[data-route="rollout"]')
            drawn = p.locator('.route.reference[data-label="rollout"]').count()
            guided = '.route[data-label="guided"]:not(.filtered)'
            assert drawn == p.locator(guided).count()
            assert page.errors == []

    def test_compare_routes_toggle_beside_the_guided_ones(self, browser, tmp_path):
        ids, args = agreement_batch(batch=1)
        ip = attribution(masked_lm())
        keywords = agreement_keywords(args)
        guided = ip.attribute(ids, **keywords)
        comparison = compare(ip, ip.request(ids, **keywords),
                             methods=("rollout", "flow"), guided=guided)
        path = tmp_path / "compare.html"
        path.write_text(viewer_html(guided, routes=comparison))
        document = page_data(path.read_text())["document"]
        assert sorted(document["routes"]) == ["flow", "rollout"]
        with opened(browser, str(path)) as page:
            p = page.page
            set_share(p, 0.0)
            for name in ("rollout", "flow"):
                p.check(f'.cip-route-toggle[data-route="{name}"]')
                for k, route in enumerate(comparison.patterns[0][name]):
                    nodes = p.eval_on_selector_all(
                        f'.route[data-label="{name}"][data-source="{route.source}"] '
                        ".node", "ns => ns.map(n => [+n.dataset.layer, "
                        "+n.dataset.position, n.dataset.kind])")
                    assert nodes == [[n.layer, n.position, n.kind] for n in route.nodes]
                # A reference route keeps no candidates: its node's influence shows.
                route = comparison.patterns[0][name][0]
                p.click(f'.route[data-label="{name}"][data-source="{route.source}"] '
                        '.node[data-layer="1"]', force=True)
                assert "No candidates stored" in p.inner_text(".cip-candidates")
                keys = [k for k, _, _ in shown_numbers(p)]
                assert f"routes/{name}/0/0/influence" in keys
                check_numbers(p, document)
            assert page.errors == []

    def test_share_filter_hides_small_sources(self, browser, explained):
        path, document = explained
        g = [abs(p["token_influence"]) for p in document["patterns"][0]]
        with opened(browser, path) as page:
            p = page.page
            for share in (0.0, 0.1, 0.3):
                set_share(p, share)
                shown = p.eval_on_selector_all(
                    '.route[data-label="guided"]:not(.filtered)',
                    "rs => rs.map(r => +r.dataset.source)",
                )
                expected = [q["source"] for q, v in zip(document["patterns"][0], g)
                            if v >= share * sum(g)]
                assert sorted(shown) == sorted(expected)

    def test_deep_and_long_page_collapses_and_zooms(self, browser, tmp_path):
        document = synthetic_document(layers=30, length=128, heads=8)
        path = tmp_path / "deep.html"
        path.write_text(viewer_html(document))
        with opened(browser, str(path)) as page:
            p = page.page
            # The 30 layers fit the canvas's width (1280 px window).
            width = float(p.get_attribute(".cip-svg", "width"))
            assert width <= p.locator(".canvas").bounding_box()["width"]
            set_share(p, 0.02)
            p.check(".cip-collapse")
            patterns = document["patterns"][0]
            total = sum(abs(q["token_influence"]) for q in patterns)
            shown = [q for q in patterns if abs(q["token_influence"]) >= 0.02 * total]
            skip_only = [str(layer) for layer in range(1, 31)
                         if all(q["nodes"][layer - 1]["kind"] == "skip" for q in shown)]
            assert skip_only, "the random routes should leave skip-only layers"
            assert p.get_attribute(".cip-svg", "data-collapsed") == ",".join(skip_only)
            p.click("button.zoom >> nth=0")
            assert float(p.get_attribute(".cip-svg", "width")) < width
            # A node no other shown route shares: every route ends at the output, so
            # a click on the last layer's stack of nodes raced the hover under load.
            source, layer = next(
                (q["source"], layer)
                for q in shown
                for layer in range(1, 30)
                if str(layer) not in skip_only
                and [r["nodes"][layer - 1]["position"] for r in shown].count(
                    q["nodes"][layer - 1]["position"]
                ) == 1
            )
            click_node(p, source, layer)
            rows = p.locator('.candidates[data-stage="position"] .candidate')
            assert rows.count() == 128
            check_numbers(p, document)
            assert page.errors == []

    def test_evaluation_page_opens_a_group_and_its_sentences(self, browser, tmp_path):
        """``report RESULTS --patterns HTML`` end to end, then the page in use."""
        records = synthetic_records()
        lines = tmp_path / "results.jsonl"
        lines.write_text("".join(json.dumps(r) + "\n" for r in records))
        path = tmp_path / "evaluation.html"
        argv = ["report", str(lines), "--output", str(tmp_path / "report.md"),
                "--patterns", str(path)]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(argv) == 0
        assert f"patterns: {path}" in out.getvalue()
        expected = patterns_page(records, title="Evaluation results")
        assert page_data(path.read_text()) == page_data(expected)
        with opened(browser, str(path)) as page:
            p = page.page
            data = page_data(path.read_text())
            set_share(p, 0.0)
            for i, group in enumerate(data["groups"]):
                p.click(f'.groups li[data-group="{i}"]')
                drawn = p.locator(".cip-svg .seg").count()
                assert drawn == len(group["edges"])
                items = p.eval_on_selector_all(
                    ".sentences li", "ls => ls.map(l => +l.dataset.sentence)")
                assert items == group["sentences"]
                # The strip shows each source's mean g over the group's sentences.
                assert check_numbers(p, data) == len(group["sources"])
                for source in group["sources"]:
                    g = [next(q["token_influence"] for q in records[i]["patterns"]
                              if q["source"] == source["source"]) for i in items]
                    assert source["mean_g"] == pytest.approx(np.mean(g), rel=1e-12)
            p.click(f'.sentences li[data-sentence="{items[0]}"]')
            overlay = p.locator("#cip-sentence")
            sentence = records[items[0]]
            overlay.locator(f'.token[data-position="{sentence["sources"][0]}"] '
                            "rect.label").hover()
            assert overlay.locator(".node.highlight").count() == len(
                sentence["patterns"][0]["nodes"])
            sentence_page = overlay.locator(".cip-svg")
            numbers = sentence_page.evaluate(
                "s => [...s.closest('.cip').querySelectorAll('.num')].map("
                "n => [n.dataset.key, n.dataset.value])")
            document = data["sentences"][items[0]]["document"]
            assert numbers
            for key, value in numbers:
                assert float(value) == _resolve(document, key)
            p.click("#cip-back")
            assert p.locator("#cip-sentence").count() == 0
            assert page.errors == []

    def test_batch_examples_switch(self, browser, tmp_path):
        documents = [synthetic_document(4, 6 + b, 2, seed=b, output=3) for b in (0, 1)]
        document = dict(documents[0])
        for key in ("token_influence", "patterns", "output_positions", "input_ids",
                    "tokens"):
            document[key] = documents[0][key] + documents[1][key]
        path = tmp_path / "batch.html"
        path.write_text(viewer_html(document, example=1))
        with opened(browser, str(path)) as page:
            p = page.page
            for b in (1, 0):
                p.select_option(".cip-example", str(b))
                assert p.locator(".cip-svg .token").count() == 6 + b
                assert check_numbers(p, document) == 6 + b  # the strip's g
                assert {k.split("/")[1] for k, _, _ in shown_numbers(p)} == {str(b)}
            assert page.errors == []

    def test_notebook_frame_renders(self, browser, explained):
        result = InfluencePatternsResult.from_dict(explained[1])
        page = Page(browser, content=result._repr_html_())
        try:
            frame = page.page.frame_locator("iframe")
            frame.locator("#cip-root[data-ready]").wait_for()
            assert frame.locator(".route").count() == len(result.patterns[0])
            assert page.errors == []
        finally:
            page.close()
