"""Runs one console page check in headless Chromium: imports NAME.py from this folder and
calls its check(ctx). Prints `ok NAME` on success; on failure prints the error, the browser's
console log and the page's text, saves NAME-failure.png, and exits 1.

usage: run.py --page NAME --urls URL,URL,.. --screens DIR [--extra JSON]

STRATA_TOKEN, when set, is the bearer token the check and the console use (access control).
"""
import argparse
import importlib
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402  (after the path is set)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", required=True, help="the check to run: NAME.py in " + HERE)
    parser.add_argument("--urls", required=True, help="API base URLs of every node, comma-separated")
    parser.add_argument("--screens", required=True, help="folder the screenshots go to")
    parser.add_argument("--extra", default="{}", help="a JSON object the check reads as ctx.extra")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(HERE, f"{args.page}.py")):
        print(f"no check for page {args.page!r}: {HERE}/{args.page}.py does not exist", file=sys.stderr)
        return 2
    module = importlib.import_module(args.page)
    # A failure screenshot left by an earlier run would say this run failed too.
    stale = os.path.join(args.screens, f"{args.page}-failure.png")
    if os.path.exists(stale):
        os.remove(stale)
    urls = [u for u in args.urls.split(",") if u]
    driver = common.start_browser()
    ctx = common.Ctx(driver, urls, args.screens, json.loads(args.extra), os.environ.get("STRATA_TOKEN"))
    try:
        module.check(ctx)
    except Exception:
        traceback.print_exc()
        try:
            print(f"screenshot: {common.shot(ctx, f'{args.page}-failure')}", file=sys.stderr)
            text = driver.execute_script("return document.body ? document.body.innerText : ''")
            print(f"--- page {driver.current_url}:\n{text}", file=sys.stderr)
        except Exception as e:  # diagnostics must not hide the failure
            print(f"(no screenshot or page text: {e})", file=sys.stderr)
        print(f"--- browser console:\n{common.browser_log(ctx)}", file=sys.stderr)
        return 1
    finally:
        log = common.browser_log(ctx)
        driver.quit()
    if log:
        print(f"browser console:\n{log}")
    print(f"ok {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
