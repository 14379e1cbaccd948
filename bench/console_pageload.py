"""Page-load times of the web console in headless Chromium, for bench/console.sh.

For each page, RUNS loads with the browser cache cleared first ("cold": every file fetched)
and RUNS loads with it kept ("warm": files revalidated, answered 304), alternating. A load
goes to about:blank, then to URL/ui/#/PAGE, and lasts from the navigation's start
(performance.timeOrigin) to the first animation frame after the page's marker element is in
the document: the page has fetched its data and drawn it. A script installed before the
page's own (DevTools Page.addScriptToEvaluateOnNewDocument) watches the DOM for the marker,
so the time is taken inside the page, not by polling it from here. A page that shows an
error box (`.error`) instead fails the run.

Prints one JSON object: {pages: {PAGE: {cold: {ms: [..], dom_ms: [..]}, warm: {..}}}, markers}:
`ms` to the frame after the marker, `dom_ms` to the marker's insertion.

usage: console_pageload.py --url URL --pages cluster,kv,.. --runs N [--marker PAGE=CSS]..
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "crates", "strata", "tests", "py", "console"))

import common  # noqa: E402  (the console tests' browser set-up)

# The element that shows a page has drawn its data. Page authors: keep yours here.
MARKERS = {
    "cluster": 'section.page[data-page="cluster"] table[aria-label="members"]',
    "kv": 'section.page[data-page="kv"] ul.kv-tree[aria-label="keys"]',
    "services": 'section.page[data-page="services"] table',
    "configs": 'section.page[data-page="configs"] table',
    "gateway": 'section.page[data-page="gateway"] h2',
    "monitor": 'section.page[data-page="monitor"] svg.chart',
}

# Runs in every new document before its scripts: records, in window.__strataLoad, when the
# marker (or an error box) first appears, and the first frame after that.
WATCH = """
(() => {
  const markers = %s;
  const name = location.hash.replace(/^#\\/?/, "").split("?")[0];
  const css = markers[name];
  if (!css) return;
  const section = `section.page[data-page="${name}"]`;
  const seen = () => {
    if (window.__strataLoad) return;
    const error = document.querySelector(`${section} .error`);
    if (!document.querySelector(css) && !error) return;
    const load = { dom: performance.now(), error: error ? error.innerText : null };
    window.__strataLoad = load;
    observer.disconnect();
    requestAnimationFrame(() => { load.frame = performance.now(); });
  };
  const observer = new MutationObserver(seen);
  observer.observe(document, { childList: true, subtree: true, attributes: true });
})();
"""


def load_once(driver, url, page, cold, timeout=10):
    """One load of `page`; returns (frame_ms, dom_ms)."""
    driver.get("about:blank")
    if cold:
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.get(f"{url}/ui/#/{page}")
    deadline = time.monotonic() + timeout
    while True:
        load = driver.execute_script("return window.__strataLoad || null")
        if load and load.get("error"):
            raise RuntimeError(f"the {page} page showed an error: {load['error']}")
        if load and load.get("frame") is not None:
            return load["frame"], load["dom"]
        if time.monotonic() > deadline:
            text = driver.execute_script("return document.body ? document.body.innerText : ''")
            raise TimeoutError(
                f"the {page} page showed no {MARKERS[page]!r} within {timeout} s; it shows:\n{text}"
            )
        time.sleep(0.02)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="API base URL of the node")
    parser.add_argument("--pages", required=True, help="pages to load, comma-separated")
    parser.add_argument("--runs", type=int, default=20, help="cold and warm loads per page")
    parser.add_argument("--marker", action="append", default=[], help="PAGE=CSS: another marker")
    args = parser.parse_args()
    for override in args.marker:
        page, css = override.split("=", 1)
        MARKERS[page] = css
    pages = [p for p in args.pages.split(",") if p]
    unknown = [p for p in pages if p not in MARKERS]
    if unknown:
        parser.error(f"no marker for {unknown}: give --marker PAGE=CSS")
    driver = common.start_browser()
    try:
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": WATCH % json.dumps(MARKERS)}
        )
        driver.execute_cdp_cmd("Network.enable", {})
        results = {}
        for page in pages:
            # One load first, unmeasured: the browser's own start-up (fonts, code caches).
            load_once(driver, args.url, page, cold=True)
            result = {mode: {"ms": [], "dom_ms": []} for mode in ("cold", "warm")}
            for _ in range(args.runs):
                for mode in ("cold", "warm"):
                    frame, dom = load_once(driver, args.url, page, cold=mode == "cold")
                    result[mode]["ms"].append(round(frame, 1))
                    result[mode]["dom_ms"].append(round(dom, 1))
            results[page] = result
    finally:
        driver.quit()
    print(json.dumps({"pages": results, "markers": {p: MARKERS[p] for p in pages}}))


if __name__ == "__main__":
    main()
